/**
 * The `config.json` of a `.keras` file: cellfinder's network serialised the
 * way Keras 3 serialises the model `build_model` returns (a Functional model
 * of standard Keras layers, compiled with Adam and categorical
 * cross-entropy), so that `keras.saving.load_model` rebuilds it.
 */
import type { LayerSpec, ResNetSpec } from './resnet';
import { BATCH_NORM_AXIS, BATCH_NORM_EPSILON, BATCH_NORM_MOMENTUM } from './resnet';

/** The Keras version whose format we write (checked by the peer tests). */
export const KERAS_VERSION = '3.15.1';

const DTYPE = { module: 'keras', class_name: 'DTypePolicy', config: { name: 'float32' }, registered_name: null };

function initializer(className: string, config: Record<string, unknown> = {}) {
  return { module: 'keras.initializers', class_name: className, config, registered_name: null };
}
const GLOROT = () => initializer('GlorotUniform', { seed: null, input_axes: null, output_axes: null });
const HE_NORMAL = () => initializer('HeNormal', { seed: null, input_axes: null, output_axes: null });
const ZEROS = () => initializer('Zeros');
const ONES = () => initializer('Ones');

type Shape = Array<number | null>;

function kerasTensor(shape: Shape, layer: string) {
  return { class_name: '__keras_tensor__', config: { shape, dtype: 'float32', keras_history: [layer, 0, 0] } };
}

function layerConfig(layer: LayerSpec, shapeOf: (name: string) => Shape): Record<string, unknown> {
  const inputShape = layer.inputs.length ? shapeOf(layer.inputs[0]) : [];
  const common = { name: layer.name, trainable: true, dtype: DTYPE };
  const node = (kwargs: Record<string, unknown> = {}) => [
    {
      args: layer.inputs.length === 1 ? [kerasTensor(shapeOf(layer.inputs[0]), layer.inputs[0])] : [layer.inputs.map((name) => kerasTensor(shapeOf(name), name))],
      kwargs,
    },
  ];
  const wrap = (className: string, config: Record<string, unknown>, buildConfig: unknown, kwargs?: Record<string, unknown>) => ({
    module: 'keras.layers',
    class_name: className,
    config: { ...common, ...config },
    registered_name: null,
    ...(buildConfig === undefined ? {} : { build_config: buildConfig }),
    name: layer.name,
    inbound_nodes: node(kwargs),
  });
  switch (layer.kind) {
    case 'input':
      return {
        module: 'keras.layers',
        class_name: 'InputLayer',
        config: { batch_shape: [null, ...layer.outputShape], dtype: 'float32', sparse: false, ragged: false, name: layer.name, optional: false },
        registered_name: null,
        name: layer.name,
        inbound_nodes: [],
      };
    case 'zeroPadding': {
      const p = layer.padding;
      return wrap('ZeroPadding3D', { padding: [[p, p], [p, p], [p, p]], data_format: 'channels_last' }, { input_shape: inputShape });
    }
    case 'conv':
      return wrap(
        'Conv3D',
        {
          filters: layer.filters,
          kernel_size: layer.kernel,
          strides: layer.strides,
          padding: 'valid',
          data_format: 'channels_last',
          dilation_rate: [1, 1, 1],
          groups: 1,
          activation: 'linear',
          use_bias: false,
          kernel_initializer: layer.weights[0].initializer === 'he_normal' ? HE_NORMAL() : GLOROT(),
          bias_initializer: ZEROS(),
          kernel_regularizer: null,
          bias_regularizer: null,
          activity_regularizer: null,
          kernel_constraint: null,
          bias_constraint: null,
        },
        { input_shape: inputShape },
      );
    case 'batchNorm':
      return wrap(
        'BatchNormalization',
        {
          axis: BATCH_NORM_AXIS,
          momentum: BATCH_NORM_MOMENTUM,
          epsilon: BATCH_NORM_EPSILON,
          center: true,
          scale: true,
          beta_initializer: ZEROS(),
          gamma_initializer: ONES(),
          moving_mean_initializer: ZEROS(),
          moving_variance_initializer: ONES(),
          beta_regularizer: null,
          gamma_regularizer: null,
          beta_constraint: null,
          gamma_constraint: null,
          synchronized: false,
          renorm: false,
          renorm_clipping: null,
          renorm_momentum: 0.99,
        },
        { input_shape: inputShape },
        { mask: null },
      );
    case 'relu':
      return wrap('Activation', { activation: 'relu' }, undefined);
    case 'maxPool':
      return wrap('MaxPooling3D', { pool_size: layer.poolSize, padding: 'valid', strides: layer.strides, data_format: 'channels_last' }, undefined);
    case 'add':
      return wrap('Add', {}, { input_shape: layer.inputs.map(shapeOf) });
    case 'globalAveragePool':
      return wrap('GlobalAveragePooling3D', { data_format: 'channels_last', keepdims: false }, undefined);
    case 'dense':
      return wrap(
        'Dense',
        {
          units: layer.units,
          activation: 'softmax',
          use_bias: true,
          kernel_initializer: GLOROT(),
          bias_initializer: ZEROS(),
          kernel_regularizer: null,
          bias_regularizer: null,
          kernel_constraint: null,
          bias_constraint: null,
          quantization_config: null,
        },
        { input_shape: inputShape },
      );
  }
}

export function kerasModelConfig(spec: ResNetSpec, learningRate: number): Record<string, unknown> {
  const shapes = new Map(spec.layers.map((layer) => [layer.name, [null, ...layer.outputShape] as Shape]));
  const shapeOf = (name: string) => shapes.get(name) as Shape;
  return {
    module: 'keras.src.models.functional',
    class_name: 'Functional',
    config: {
      name: 'functional',
      trainable: true,
      layers: spec.layers.map((layer) => layerConfig(layer, shapeOf)),
      input_layers: [spec.layers[0].name, 0, 0],
      output_layers: ['fully_connected', 0, 0],
    },
    registered_name: 'Functional',
    build_config: { input_shape: null },
    compile_config: {
      optimizer: {
        module: 'keras.optimizers',
        class_name: 'Adam',
        config: {
          name: 'adam',
          learning_rate: learningRate,
          weight_decay: null,
          clipnorm: null,
          global_clipnorm: null,
          clipvalue: null,
          use_ema: false,
          ema_momentum: 0.99,
          ema_overwrite_frequency: null,
          loss_scale_factor: null,
          gradient_accumulation_steps: null,
          beta_1: 0.9,
          beta_2: 0.999,
          epsilon: 1e-7,
          amsgrad: false,
        },
        registered_name: null,
      },
      loss: 'categorical_crossentropy',
      loss_weights: null,
      metrics: ['accuracy'],
      weighted_metrics: null,
      run_eagerly: false,
      steps_per_execution: 1,
      jit_compile: true,
    },
  };
}
