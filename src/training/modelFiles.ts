/**
 * Keras model files for cellfinder's network, read and written through
 * h5wasm (HDF5 compiled to WebAssembly: ships inside the npm package, needs
 * no native build and no download, reads and writes real HDF5 files).
 *
 * - `.weights.h5` (Keras 3 `save_weights`): `layers/<group>/vars/<i>`, one
 *   group per layer named by class and position (`conv3d_3`), with the layer's
 *   own name in the `vars` group's `name` attribute; the optimiser under
 *   `optimizer/vars` (iteration, learning rate, then momentum and velocity
 *   per trainable variable, interleaved).
 * - `.keras` (Keras 3 `save`): a zip of `config.json` (the architecture),
 *   `metadata.json` and `model.weights.h5` (as above).
 * - legacy `.h5` (Keras 2 `save_weights`, the layout of cellfinder's
 *   pre-trained `resnet50_tv.h5`): one group per layer with `weight_names`,
 *   the root's `layer_names`; Keras 3 matches these by layer order.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream, promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { strFromU8, strToU8, Unzip, UnzipInflate, unzipSync } from 'fflate';
import type * as tfType from '@tensorflow/tfjs';
import { removeFilesOfDeadProcesses, writeFileAtomic, type AtomicWriteOptions } from '../core/atomicFile';
import { DataFileError } from '../core/errors';
import type { KerasAdam } from './adam';
import { kerasModelConfig, KERAS_VERSION } from './kerasConfig';
import { writeStoredZip, type ZipMember } from './storedZip';
import { kerasWeightGroups, NETWORK_DEPTHS, resnetSpec, weightKey, type NetworkDepth, type ResNetSpec, type Weights } from './resnet';

type H5Module = typeof import('h5wasm/node', { with: { 'resolution-mode': 'import' } });
type H5Group = InstanceType<H5Module['Group']>;
type H5Dataset = InstanceType<H5Module['Dataset']>;

let h5Loading: Promise<H5Module['default']> | undefined;
async function h5wasm(): Promise<H5Module['default']> {
  h5Loading ??= import('h5wasm/node').then(async (module) => {
    await module.default.ready;
    return module.default;
  });
  return h5Loading;
}

export interface LoadedOptimizer {
  iterations: number;
  learningRate: number;
  /** Per trainable weight key. */
  slots: Map<string, { momentum: Float32Array; velocity: Float32Array }>;
}

export interface LoadedModel {
  file: string;
  format: 'keras' | 'weights.h5' | 'legacy.h5';
  depth: NetworkDepth;
  channels: number;
  /** Values by `layer/variable` key, in the shapes of `resnetSpec(depth, channels)`. */
  weights: Map<string, Float32Array>;
  optimizer?: LoadedOptimizer;
}

/** Convolutions per depth: how we tell a file's network depth from its weights. */
const CONVOLUTIONS_PER_DEPTH = new Map<number, NetworkDepth>(NETWORK_DEPTHS.map((depth) => [resnetSpec(depth, 1).layers.filter((l) => l.kind === 'conv').length, depth]));

const NOT_A_MODEL_FIX = 'Choose a cellfinder model: a .keras model, a .weights.h5 file, or a Keras 2 .h5 weights file such as resnet50_tv.h5';

// ---------------------------------------------------------------- writing

/** h5wasm writes to a path: `cellfinder-retrain-<pid>-<12 hex>.h5` in the system's temporary folder. */
const HDF5_TEMP_NAME = /^cellfinder-retrain-(\d+)-[0-9a-f]{12}\.h5$/;

/** Removes the HDF5 temporary files of processes killed while writing a model (hundreds of MB each). */
export function removeStaleModelTempFiles(): Promise<string[]> {
  return removeFilesOfDeadProcesses(tmpdir(), HDF5_TEMP_NAME);
}

async function withTempFile<T>(use: (file: string) => Promise<T>): Promise<T> {
  const file = path.join(tmpdir(), `cellfinder-retrain-${process.pid}-${randomBytes(6).toString('hex')}.h5`);
  try {
    return await use(file);
  } finally {
    await fs.rm(file, { force: true });
  }
}

function trainableKeys(spec: ResNetSpec): string[] {
  return spec.layers.flatMap((layer) => layer.weights.filter((w) => w.trainable).map((w) => weightKey(layer.name, w.name)));
}

/** Writes Keras 3's weights HDF5 layout to `file` (a path h5wasm writes directly). */
async function writeWeightsHdf5(file: string, spec: ResNetSpec, weights: Weights, optimizer?: KerasAdam): Promise<void> {
  const h5 = await h5wasm();
  const out = new h5.File(file, 'w');
  try {
    out.create_group('vars').create_attribute('name', 'functional');
    out.create_group('layers');
    const groups = kerasWeightGroups(spec);
    for (const layer of spec.layers) {
      out.create_group(`layers/${groups.get(layer.name)}`);
      const vars = out.create_group(`layers/${groups.get(layer.name)}/vars`) as H5Group;
      vars.create_attribute('name', layer.name);
      layer.weights.forEach((w, index) => {
        const value = (weights.get(weightKey(layer.name, w.name)) as tfType.Variable).dataSync() as Float32Array;
        vars.create_dataset({ name: String(index), data: value, shape: w.shape, dtype: '<f' });
      });
    }
    out.create_group('optimizer');
    const vars = out.create_group('optimizer/vars') as H5Group;
    vars.create_attribute('name', 'adam');
    vars.create_dataset({ name: '0', data: new Int32Array([optimizer?.iterations ?? 0]), shape: [], dtype: '<i4' });
    vars.create_dataset({ name: '1', data: new Float32Array([optimizer?.learningRate ?? 0.0001]), shape: [], dtype: '<f' });
    if (optimizer && optimizer.slots.size > 0) {
      let index = 2;
      for (const key of trainableKeys(spec)) {
        const slots = optimizer.slots.get(key);
        if (!slots) throw new Error(`no optimiser state for ${key}`);
        for (const slot of [slots.momentum, slots.velocity]) {
          vars.create_dataset({ name: String(index++), data: slot.dataSync() as Float32Array, shape: slot.shape, dtype: '<f' });
        }
      }
    }
  } finally {
    out.close();
  }
}

/**
 * `model.weights.h5` / checkpoint `.weights.h5`, as Keras 3 `save_weights`
 * writes it from a compiled model: with the optimiser's state, which
 * cellfinder's `--continue-training --model-weights` restores.
 */
export async function writeKerasWeights(file: string, spec: ResNetSpec, weights: Weights, optimizer?: KerasAdam, options: AtomicWriteOptions = {}): Promise<void> {
  await withTempFile(async (temp) => {
    await writeWeightsHdf5(temp, spec, weights, optimizer);
    await writeFileAtomic(file, await fs.readFile(temp), options);
  });
}

/** A `.keras` model (architecture, weights and optimiser state) that Keras 3 loads with `load_model`. */
export async function writeKerasModel(file: string, spec: ResNetSpec, weights: Weights, optimizer?: KerasAdam, options: AtomicWriteOptions = {}): Promise<void> {
  await withTempFile(async (temp) => {
    await writeWeightsHdf5(temp, spec, weights, optimizer);
    const members: ZipMember[] = [
      { name: 'metadata.json', data: strToU8(JSON.stringify({ keras_version: KERAS_VERSION, date_saved: kerasDate(new Date()) })) },
      { name: 'config.json', data: strToU8(JSON.stringify(kerasModelConfig(spec, optimizer?.learningRate ?? 0.0001))) },
      { name: 'model.weights.h5', file: temp },
    ];
    await writeFileAtomic(file, (handle) => writeStoredZip(handle, members), options);
  });
}

function kerasDate(date: Date): string {
  const two = (n: number) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())}@${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}`;
}

// ---------------------------------------------------------------- reading

export interface ReadModelOptions {
  /** The depth the caller expects (e.g. --network-depth); a different one is an error. */
  depth?: NetworkDepth;
  /** Channels of the training data; a model with other input channels is an error. */
  channels?: number;
}

/**
 * Reads any of the three formats into cellfinder's network. The depth and
 * channels are read from the file; a mismatch with what the caller expects
 * is an error naming both, and nothing is loaded.
 */
const NEITHER_ZIP_NOR_HDF5 = 'is not a Keras model or weights file (neither a .keras zip nor HDF5)';
const HDF5_SIGNATURE = Buffer.from([0x89, 0x48, 0x44, 0x46, 0x0d, 0x0a, 0x1a, 0x0a]);

export async function readModelFile(file: string, expected: ReadModelOptions = {}): Promise<LoadedModel> {
  let bytes: Buffer;
  try {
    bytes = await fs.readFile(file);
  } catch (error) {
    throw new DataFileError(file, (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : `cannot be read (${(error as Error).message})`, 'Check the path');
  }
  const isZip = bytes.length > 4 && bytes.readUInt32LE(0) === 0x04034b50;
  const isHdf5 = bytes.length > 8 && bytes.subarray(0, 8).equals(HDF5_SIGNATURE);
  if (isZip) return readKerasArchive(file, bytes, expected);
  if (isHdf5) return readHdf5File(file, file, expected, 'weights.h5');
  throw new DataFileError(file, NEITHER_ZIP_NOR_HDF5, NOT_A_MODEL_FIX);
}

async function readKerasArchive(file: string, bytes: Buffer, expected: ReadModelOptions): Promise<LoadedModel> {
  let members: Record<string, Uint8Array>;
  try {
    members = unzipSync(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  } catch (error) {
    throw new DataFileError(file, `is a damaged zip archive (${(error as Error).message})`, NOT_A_MODEL_FIX);
  }
  const weightsMember = members['model.weights.h5'];
  if (!members['config.json'] || !weightsMember) {
    throw new DataFileError(file, 'is a zip but not a Keras 3 model (no config.json and model.weights.h5)', NOT_A_MODEL_FIX);
  }
  const config = JSON.parse(strFromU8(members['config.json'])) as { config?: { layers?: Array<{ name?: string }> } };
  const layerNames = new Set((config.config?.layers ?? []).map((layer) => layer.name));
  if (!layerNames.has('conv1') || !layerNames.has('fully_connected')) {
    throw new DataFileError(file, 'holds a Keras model that is not cellfinder\'s network (no conv1 / fully_connected layers)', NOT_A_MODEL_FIX);
  }
  return withTempFile(async (temp) => {
    await fs.writeFile(temp, weightsMember);
    return { ...(await readHdf5File(temp, file, expected, 'keras')), file };
  });
}

async function readHdf5File(h5Path: string, file: string, expected: ReadModelOptions, format: 'keras' | 'weights.h5'): Promise<LoadedModel> {
  const h5 = await h5wasm();
  let input: InstanceType<H5Module['File']>;
  try {
    input = new h5.File(h5Path, 'r');
  } catch (error) {
    throw new DataFileError(file, `cannot be read as HDF5 (${(error as Error).message})`, NOT_A_MODEL_FIX);
  }
  try {
    const keys = input.keys();
    if (keys.includes('layers')) return readKeras3Weights(input, file, expected, format);
    const root = keys.includes('model_weights') ? (input.get('model_weights') as H5Group) : input;
    if ('layer_names' in root.attrs) return readLegacyWeights(root, file, expected);
    throw new DataFileError(file, 'is an HDF5 file but holds no Keras weights (no layers/ group, no layer_names)', NOT_A_MODEL_FIX);
  } finally {
    input.close();
  }
}

function floatValues(dataset: H5Dataset, file: string, what: string): Float32Array {
  const value = dataset.value as unknown;
  if (value instanceof Float32Array) return value;
  if (value instanceof Float64Array || value instanceof Int32Array || value instanceof Uint16Array) return Float32Array.from(value as ArrayLike<number>);
  throw new DataFileError(file, `${what} is not a float array`, NOT_A_MODEL_FIX);
}

/** The spec the file's weights describe, checked against what the caller expects. */
function specFor(file: string, convolutions: number, channels: number, expected: ReadModelOptions): ResNetSpec {
  const depth = CONVOLUTIONS_PER_DEPTH.get(convolutions);
  if (!depth) throw new DataFileError(file, `has ${convolutions} convolution kernels, which matches no ResNet depth cellfinder builds (18, 34, 50, 101, 152)`, NOT_A_MODEL_FIX);
  if (expected.depth !== undefined && expected.depth !== depth) {
    throw new DataFileError(file, `holds a ResNet-${depth}, but the network depth asked for is ${expected.depth}`, `Use --network-depth ${depth}, or choose a ResNet-${expected.depth} model`);
  }
  if (expected.channels !== undefined && expected.channels !== channels) {
    throw new DataFileError(file, `takes ${channels} input channel(s), but the data has ${expected.channels}`, channels === 1 ? 'Use a two-channel model (signal + background) or train on signal-only cubes' : 'Use a single-channel model for signal-only cubes');
  }
  return resnetSpec(depth, channels);
}

function checkShape(file: string, key: string, values: Float32Array, shape: number[]): void {
  const size = shape.reduce((a, b) => a * b, 1);
  if (values.length !== size) throw new DataFileError(file, `weight ${key} has ${values.length} values, cellfinder's network needs ${size} (${shape.join('x')})`, NOT_A_MODEL_FIX);
}

function readKeras3Weights(input: InstanceType<H5Module['File']>, file: string, expected: ReadModelOptions, format: 'keras' | 'weights.h5'): LoadedModel {
  const layersGroup = input.get('layers') as H5Group;
  // Each group's `vars` carries the layer's real name; fall back to Keras' class-and-position names.
  const byLayerName = new Map<string, H5Group>();
  const byGroupName = new Map<string, H5Group>();
  for (const groupName of layersGroup.keys()) {
    const vars = input.get(`layers/${groupName}/vars`) as H5Group | null;
    if (!vars) continue;
    byGroupName.set(groupName, vars);
    const name = vars.attrs.name?.value;
    if (typeof name === 'string') byLayerName.set(name, vars);
  }
  const convolutionGroups = [...byGroupName.keys()].filter((name) => /^conv3d(_\d+)?$/.test(name)).length;
  const conv1 = (byLayerName.get('conv1') ?? byGroupName.get('conv3d'))?.get('0') as H5Dataset | null;
  if (!conv1 || conv1.shape?.length !== 5) throw new DataFileError(file, 'has no 3D conv1 kernel', NOT_A_MODEL_FIX);
  const spec = specFor(file, convolutionGroups, conv1.shape[3], expected);
  const groups = kerasWeightGroups(spec);
  const weights = new Map<string, Float32Array>();
  for (const layer of spec.layers) {
    if (layer.weights.length === 0) continue;
    const vars = byLayerName.get(layer.name) ?? byGroupName.get(groups.get(layer.name) as string);
    if (!vars) throw new DataFileError(file, `has no weights for layer ${layer.name}`, NOT_A_MODEL_FIX);
    layer.weights.forEach((w, index) => {
      const dataset = vars.get(String(index)) as H5Dataset | null;
      const key = weightKey(layer.name, w.name);
      if (!dataset) throw new DataFileError(file, `has no ${key}`, NOT_A_MODEL_FIX);
      const values = floatValues(dataset, file, key);
      checkShape(file, key, values, w.shape);
      weights.set(key, values);
    });
  }
  return { file, format, depth: spec.depth, channels: spec.channels, weights, optimizer: readOptimizer(input, spec) };
}

function readOptimizer(input: InstanceType<H5Module['File']>, spec: ResNetSpec): LoadedOptimizer | undefined {
  const vars = input.get('optimizer/vars') as H5Group | null;
  if (!vars) return undefined;
  const count = vars.keys().length;
  const keys = trainableKeys(spec);
  if (count < 2) return undefined;
  const scalar = (name: string) => Number((vars.get(name) as H5Dataset).value);
  const optimizer: LoadedOptimizer = { iterations: scalar('0'), learningRate: scalar('1'), slots: new Map() };
  // Slots are present once Keras (or we) took a step: momentum and velocity per trainable variable.
  if (count === 2 + 2 * keys.length) {
    keys.forEach((key, i) => {
      optimizer.slots.set(key, {
        momentum: Float32Array.from((vars.get(String(2 + 2 * i)) as H5Dataset).value as ArrayLike<number>),
        velocity: Float32Array.from((vars.get(String(3 + 2 * i)) as H5Dataset).value as ArrayLike<number>),
      });
    });
  }
  return optimizer;
}

function attributeStrings(value: unknown): string[] {
  if (Array.isArray(value)) return value.map(String);
  if (typeof value === 'string') return [value];
  return [];
}

function readLegacyWeights(root: H5Group, file: string, expected: ReadModelOptions): LoadedModel {
  const layerNames = attributeStrings(root.attrs.layer_names?.value);
  // Layers that hold weights, in file order: Keras 3 loads legacy files by this order.
  const withWeights = layerNames
    .map((name) => ({ name, weightNames: attributeStrings((root.get(name) as H5Group | null)?.attrs.weight_names?.value) }))
    .filter((layer) => layer.weightNames.length > 0);
  const values = withWeights.map((layer) =>
    layer.weightNames.map((weightName) => {
      const dataset = root.get(`${layer.name}/${weightName}`) as H5Dataset | null;
      if (!dataset) throw new DataFileError(file, `lists ${weightName} but holds no such dataset`, NOT_A_MODEL_FIX);
      return { dataset, values: floatValues(dataset, file, weightName) };
    }),
  );
  const kernels = values.filter((layer) => layer.length === 1 && layer[0].dataset.shape?.length === 5);
  if (kernels.length === 0) throw new DataFileError(file, 'holds no 3D convolution kernels', NOT_A_MODEL_FIX);
  const spec = specFor(file, kernels.length, (kernels[0][0].dataset.shape as number[])[3], expected);
  const specLayers = spec.layers.filter((layer) => layer.weights.length > 0);
  if (specLayers.length !== withWeights.length) {
    throw new DataFileError(file, `has ${withWeights.length} layers with weights, cellfinder's ResNet-${spec.depth} has ${specLayers.length}`, NOT_A_MODEL_FIX);
  }
  const weights = new Map<string, Float32Array>();
  specLayers.forEach((layer, i) => {
    if (values[i].length !== layer.weights.length) {
      throw new DataFileError(file, `layer ${withWeights[i].name} has ${values[i].length} weights where ${layer.name} needs ${layer.weights.length}`, NOT_A_MODEL_FIX);
    }
    layer.weights.forEach((w, j) => {
      const key = weightKey(layer.name, w.name);
      checkShape(file, key, values[i][j].values, w.shape);
      weights.set(key, values[i][j].values);
    });
  });
  return { file, format: 'legacy.h5', depth: spec.depth, channels: spec.channels, weights };
}

// ---------------------------------------------------------------- describing

export interface ModelDescription {
  format: LoadedModel['format'];
  depth: NetworkDepth;
  channels: number;
}

/**
 * Depth, input channels and format of a model file without reading its
 * weights (only the .keras config or the HDF5 metadata), for listings such as
 * the editor's Models view.
 */
export async function describeModelFile(file: string): Promise<ModelDescription> {
  const bytes = Buffer.alloc(8);
  try {
    const handle = await fs.open(file, 'r');
    try {
      await handle.read(bytes, 0, 8, 0);
    } finally {
      await handle.close();
    }
  } catch (error) {
    throw new DataFileError(file, `cannot be read (${(error as Error).message})`, 'Check the path');
  }
  if (bytes.readUInt32LE(0) === 0x04034b50) {
    let config: Uint8Array | undefined;
    try {
      config = await readZipMember(file, 'config.json');
    } catch (error) {
      throw new DataFileError(file, `is a damaged zip archive (${(error as Error).message})`, NOT_A_MODEL_FIX);
    }
    if (!config) throw new DataFileError(file, 'is a zip but not a Keras 3 model (no config.json)', NOT_A_MODEL_FIX);
    const layers = (JSON.parse(strFromU8(config)) as { config?: { layers?: Array<{ class_name?: string; config?: { batch_shape?: number[] } }> } }).config?.layers ?? [];
    const input = layers.find((layer) => layer.class_name === 'InputLayer')?.config?.batch_shape;
    const spec = specFor(file, layers.filter((layer) => layer.class_name === 'Conv3D').length, input?.[input.length - 1] ?? 0, {});
    return { format: 'keras', depth: spec.depth, channels: spec.channels };
  }
  if (!bytes.equals(HDF5_SIGNATURE)) throw new DataFileError(file, NEITHER_ZIP_NOR_HDF5, NOT_A_MODEL_FIX);
  // h5wasm reads only the metadata it is asked for, not the weights.
  const h5 = await h5wasm();
  const input = new h5.File(file, 'r');
  try {
    const keys = input.keys();
    if (keys.includes('layers')) {
      const groups = (input.get('layers') as H5Group).keys().filter((name) => /^conv3d(_\d+)?$/.test(name));
      const conv1 = input.get('layers/conv3d/vars/0') as H5Dataset | null;
      const spec = specFor(file, groups.length, conv1?.shape?.[3] ?? 0, {});
      return { format: 'weights.h5', depth: spec.depth, channels: spec.channels };
    }
    const root = keys.includes('model_weights') ? (input.get('model_weights') as H5Group) : input;
    const kernels = attributeStrings(root.attrs.layer_names?.value).flatMap((name) => {
      const layer = root.get(name) as H5Group | null;
      const weightNames = attributeStrings(layer?.attrs.weight_names?.value);
      const shape = weightNames.length === 1 ? (root.get(`${name}/${weightNames[0]}`) as H5Dataset | null)?.shape : undefined;
      return shape?.length === 5 ? [shape] : [];
    });
    const spec = specFor(file, kernels.length, kernels[0]?.[3] ?? 0, {});
    return { format: 'legacy.h5', depth: spec.depth, channels: spec.channels };
  } finally {
    input.close();
  }
}

/**
 * One member of a zip archive, streamed from the start of the file until that
 * member is complete. Keras (and our writer) put config.json first, so
 * describing a model reads a few kilobytes instead of its hundreds of
 * megabytes of weights. Undefined when the archive has no such member.
 */
export function readZipMember(file: string, member: string): Promise<Uint8Array | undefined> {
  return new Promise((resolve, reject) => {
    const stream = createReadStream(file, { highWaterMark: 64 * 1024 });
    const parts: Uint8Array[] = [];
    let settled = false;
    const settle = (error: Error | undefined, value?: Uint8Array) => {
      if (settled) return;
      settled = true;
      stream.destroy();
      if (error) reject(error);
      else resolve(value);
    };
    const unzip = new Unzip((entry) => {
      if (entry.name !== member) return;
      entry.ondata = (error, data, final) => {
        if (error) return settle(error);
        parts.push(data);
        if (final) settle(undefined, Buffer.concat(parts));
      };
      entry.start();
    });
    unzip.register(UnzipInflate);
    const push = (chunk: Uint8Array, final: boolean) => {
      try {
        unzip.push(chunk, final);
      } catch (error) {
        settle(error as Error);
      }
    };
    stream.on('data', (chunk) => push(chunk as Buffer, false));
    stream.on('end', () => {
      push(new Uint8Array(0), true);
      settle(undefined, undefined);
    });
    stream.on('error', (error) => settle(error));
  });
}
