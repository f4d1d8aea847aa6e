// Public API of the ONNX layer: read/write models, tensor conversions, small graph helpers.
// The generated protobuf types (ModelProto, NodeProto, TensorProto, ... and their Schemas for
// @bufbuild/protobuf's create/clone/equals) are re-exported as they are.
export * from './gen/onnx_pb.js';
export { TensorProto_DataType as DataType, AttributeProto_AttributeType as AttributeType } from './gen/onnx_pb.js';
export {
  type Model,
  parseModel,
  readModel,
  serializeModel,
  opsetVersion,
  forEachTensor,
  inlineExternalData,
  externalDataFiles,
} from './model.js';
export {
  tensorToFloat32,
  tensorToInt64,
  float32Tensor,
  int64Tensor,
  setTensorData,
  setTensorValues,
  encodeFloat32,
  tensorDims,
  numel,
  dropEntries,
  dataTypeName,
  float16BitsToFloat32,
  float32ToFloat16Bits,
} from './tensor.js';
export { isExternal, readExternalData, PROTOBUF_LIMIT } from './external.js';
export {
  writeModel,
  writeModelChecked,
  writeModelFiles,
  modelSource,
  EXTERNAL_MIN_BYTES,
  EXTERNAL_ALIGN,
  type WriteOptions,
  type Written,
} from './write.js';
export {
  attrInt,
  attrInts,
  attrFloat,
  attrString,
  initializerMap,
  equalInitializers,
  markCopy,
  shareEqualInitializers,
  replaceInitializerData,
  intAttr,
  intsAttr,
  floatAttr,
  stringAttr,
  tensorAttr,
  makeNode,
  makeTensorValueInfo,
  makeGraph,
  makeModel,
} from './nodes.js';
