// Local search after the greedy (DESIGN.md, "Swaps after the greedy"): exchange a kept channel i and a removed one j
// when that raises the objective F. In Gram space, for R = S∖{i}: F(R ∪ {j}) − F(S) = gain_j(R) − gain_i(R),
// and one pass of the greedy with R forced as its order leaves every channel's gain given R. So a round factors S∖{i}
// for every i in S (k forced greedy runs of k − 1 channels), takes the best swap, and stops when none improves. Cost
// per round: k times the greedy to k − 1, O(k² g d (k g + m)) per consumer; no sample is touched.
import { selectGroup, type GroupSelection, type LayerProblem, type SelectOptions } from './greedy.js';

export interface Refined {
  /** The kept channels after the swaps, ascending. */
  keep: number[];
  /** The objective (as GroupSelection.objective) of the greedy's set and of the refined one. */
  before: number;
  after: number;
  /** Swaps made (at most the rounds asked for). */
  swaps: number;
  /** The selection with the refined set forced as its order: its objective, consumers' objectives and re-fit. */
  sel: GroupSelection;
}

/** Objective gain below which a swap counts as no improvement (ties and rounding must not swap back and forth). */
const MIN_GAIN = 1e-10;

/**
 * Up to `rounds` best-improvement swaps on the set `start` (the greedy's first k channels), until no swap raises the
 * objective. Every objective here is the greedy's own (one consumer: F/‖AW‖²; several: the mean of theirs).
 */
export function refineSelection(
  problems: LayerProblem[],
  start: number[],
  rounds: number,
  opts: Omit<SelectOptions, 'order' | 'onStep'> = {},
): Refined {
  const k = start.length,
    n = problems[0]!.d / problems[0]!.g;
  const evaluate = (S: number[]) => selectGroup(problems, S.length, { ...opts, order: S });
  let S = [...start],
    sel = evaluate(S);
  const before = k ? sel.objective[k - 1]! : 0;
  // the greedy's gains in objective units: one consumer's are F's (÷ ‖AW‖²), several are weighted sums (÷ C)
  const unit = problems.length > 1 ? problems.length : sel.norm2[0]! > 0 ? sel.norm2[0]! : 1;
  let swaps = 0;
  for (let round = 0; round < rounds && k > 0 && k < n; round++) {
    let best = { gain: MIN_GAIN, out: -1, in: -1 };
    for (const i of S) {
      const { gains } = evaluate(S.filter((c) => c !== i));
      for (let j = 0; j < n; j++) {
        if (j === i || S.includes(j)) continue;
        const gain = (gains[j]! - gains[i]!) / unit;
        if (gain > best.gain) best = { gain, out: i, in: j };
      }
    }
    if (best.out < 0) break;
    S = S.map((c) => (c === best.out ? best.in : c));
    swaps++;
  }
  if (swaps) sel = evaluate(S);
  return { keep: [...S].sort((a, b) => a - b), before, after: k ? sel.objective[k - 1]! : 0, swaps, sel };
}
