// cellfinder-retrain's own TensorFlow CPU kernels: the network's batch
// normalisation (over z, axis 3 of (batch, y, x, z, channels), as cellfinder
// builds it), in training (forward and gradient) and inference form, each one
// op where TensorFlow ops take about sixty (see src/engine/nativeKernels.ts);
// and, in inference, the convolutions oneDNN runs slowly (see Convolution).
//
// Compiled into the native engine's addon (engineSetup.ts adds this file to
// tfjs-node's binding.gyp); the ops register with TensorFlow when the addon
// loads, through TensorFlow's C kernel API, which its wheel exports.
//
// Accuracy: every sum over a z slice (up to 640,000 values for conv1 at batch
// 32) accumulates in double, one accumulator per column of the (rows, z *
// channels) view, so the batch statistics and the gradient's sums are exact
// to float32 rounding; the variance is two-pass. TensorFlow's
// FusedBatchNormV3/GradV3 sum in float32 and were 1000x less accurate in the
// gradients of the layers before them (test/gradientAccuracy.test.ts).
//
// Speed: a pass over the activations per sum (forward: mean, variance,
// output; gradient: the two sums, then dx), split by rows over the CPUs this
// process may use (the convolution: by output positions).

#include <pthread.h>
#include <sched.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "tensorflow/c/kernels.h"
#include "tensorflow/c/ops.h"
#include "tensorflow/c/tf_status.h"
#include "tensorflow/c/tf_tensor.h"

// glibc 2.34 gave these new symbol versions; the old ones still exist there,
// and only they exist on the glibc 2.27 systems TensorFlow's manylinux_2_27
// wheel supports (the build checks every symbol version the addon needs).
__asm__(".symver pthread_create,pthread_create@GLIBC_2.2.5");
__asm__(".symver pthread_join,pthread_join@GLIBC_2.2.5");

namespace {

constexpr int kMaxParts = 16;
// Starting a thread costs tens of microseconds: one per 256k values at least.
constexpr int64_t kValuesPerPart = 1 << 18;

int UsableCpus() {
  static const int cpus = [] {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
    int count = CPU_COUNT(&set);
    return count > 0 ? count : 1;
  }();
  return cpus;
}

int PartsFor(int64_t values) {
  int64_t parts = values / kValuesPerPart;
  if (parts > UsableCpus()) parts = UsableCpus();
  if (parts > kMaxParts) parts = kMaxParts;
  return parts < 1 ? 1 : static_cast<int>(parts);
}

template <typename Body>
struct Part {
  const Body* body;
  int64_t begin;
  int64_t end;
  int index;
};

template <typename Body>
void* RunPart(void* argument) {
  auto* part = static_cast<Part<Body>*>(argument);
  (*part->body)(part->begin, part->end, part->index);
  return nullptr;
}

// body(first_row, end_row, part) over `rows` in `parts` contiguous parts, part
// 0 on the calling thread; a thread that cannot start runs its part here.
template <typename Body>
void ForEachPart(int64_t rows, int parts, const Body& body) {
  std::vector<Part<Body>> work(parts);
  std::vector<pthread_t> threads(parts);
  std::vector<bool> started(parts, false);
  for (int p = 0; p < parts; ++p) work[p] = {&body, rows * p / parts, rows * (p + 1) / parts, p};
  for (int p = 1; p < parts; ++p) started[p] = pthread_create(&threads[p], nullptr, RunPart<Body>, &work[p]) == 0;
  RunPart<Body>(&work[0]);
  for (int p = 1; p < parts; ++p) {
    if (started[p]) pthread_join(threads[p], nullptr);
    else RunPart<Body>(&work[p]);
  }
}

// The (rows, depth * channels) matrix view of a (batch, y, x, depth, channels) tensor.
struct Layout {
  int64_t rows;
  int64_t depth;
  int64_t channels;
  int64_t columns;
  int64_t count;  // values per z: rows * channels
};

// Owns what TF_GetInput and TF_AllocateOutput hand out.
class Tensors {
 public:
  ~Tensors() {
    for (TF_Tensor* tensor : owned_) TF_DeleteTensor(tensor);
  }
  // Input and Output return null when TensorFlow cannot give the tensor, having reported the failure to the context.
  TF_Tensor* Input(TF_OpKernelContext* context, int index, TF_Status* status) {
    TF_Tensor* tensor = nullptr;
    TF_GetInput(context, index, &tensor, status);
    if (tensor) owned_.push_back(tensor);
    return Reported(context, status) ? tensor : nullptr;
  }
  float* Output(TF_OpKernelContext* context, int index, const std::vector<int64_t>& dims, TF_Status* status) {
    size_t bytes = sizeof(float);
    for (int64_t dim : dims) bytes *= static_cast<size_t>(dim);
    TF_Tensor* tensor = TF_AllocateOutput(context, index, TF_FLOAT, dims.data(), static_cast<int>(dims.size()), bytes, status);
    if (tensor) owned_.push_back(tensor);
    return Reported(context, status) ? static_cast<float*>(TF_TensorData(tensor)) : nullptr;
  }

 private:
  // Whether status is OK; if not, the failure is reported to the context.
  static bool Reported(TF_OpKernelContext* context, TF_Status* status) {
    if (TF_GetCode(status) == TF_OK) return true;
    TF_OpKernelContext_Failure(context, status);
    return false;
  }
  std::vector<TF_Tensor*> owned_;
};

const float* Data(TF_Tensor* tensor) { return static_cast<const float*>(TF_TensorData(tensor)); }

std::vector<int64_t> DimsOf(TF_Tensor* tensor) {
  std::vector<int64_t> dims(TF_NumDims(tensor));
  for (size_t i = 0; i < dims.size(); ++i) dims[i] = TF_Dim(tensor, static_cast<int>(i));
  return dims;
}

bool Fail(TF_OpKernelContext* context, TF_Status* status, const char* op, const char* message) {
  char text[256];
  std::snprintf(text, sizeof text, "%s: %s", op, message);
  TF_SetStatus(status, TF_INVALID_ARGUMENT, text);
  TF_OpKernelContext_Failure(context, status);
  return false;
}

// Checks that x is (batch, y, x, depth, channels) and each per-z input has depth values.
bool ReadLayout(TF_OpKernelContext* context, TF_Status* status, const char* op, TF_Tensor* x, std::initializer_list<TF_Tensor*> perZ, Layout* layout) {
  if (TF_NumDims(x) != 5) return Fail(context, status, op, "the input must be 5-D (batch, y, x, z, channels)");
  layout->depth = TF_Dim(x, 3);
  layout->channels = TF_Dim(x, 4);
  layout->rows = TF_Dim(x, 0) * TF_Dim(x, 1) * TF_Dim(x, 2);
  layout->columns = layout->depth * layout->channels;
  layout->count = layout->rows * layout->channels;
  for (TF_Tensor* values : perZ) {
    if (TF_NumDims(values) != 1 || TF_Dim(values, 0) != layout->depth) return Fail(context, status, op, "each per-z input must have one value per z (the input's axis 3)");
  }
  if (layout->count == 0) return Fail(context, status, op, "the input is empty");
  return true;
}

bool SameShape(TF_Tensor* a, TF_Tensor* b) { return DimsOf(a) == DimsOf(b); }

// Each z's value repeated for its channels: one value per column.
std::vector<float> PerColumn(const Layout& layout, const std::vector<double>& perZ) {
  std::vector<float> columns(layout.columns);
  for (int64_t j = 0; j < layout.columns; ++j) columns[j] = static_cast<float>(perZ[j / layout.channels]);
  return columns;
}

// Sums over rows and channels per z, in double: terms(row, sums) adds each
// column's terms of one row to sums (sumsPerColumn runs of one per column);
// perZ gets one vector per run.
template <typename Terms>
void SumPerZ(const Layout& layout, int sumsPerColumn, const Terms& terms, std::vector<std::vector<double>>* perZ) {
  int parts = PartsFor(layout.rows * layout.columns);
  std::vector<double> partial(static_cast<size_t>(parts) * sumsPerColumn * layout.columns, 0.0);
  ForEachPart(layout.rows, parts, [&](int64_t begin, int64_t end, int part) {
    double* sums = partial.data() + static_cast<size_t>(part) * sumsPerColumn * layout.columns;
    for (int64_t row = begin; row < end; ++row) terms(row, sums);
  });
  for (int s = 0; s < sumsPerColumn; ++s) {
    std::vector<double>& out = (*perZ)[s];
    out.assign(layout.depth, 0.0);
    for (int p = 0; p < parts; ++p) {
      const double* sums = partial.data() + (static_cast<size_t>(p) * sumsPerColumn + s) * layout.columns;
      for (int64_t j = 0; j < layout.columns; ++j) out[j / layout.channels] += sums[j];
    }
  }
}

// Rows of out from rows of the inputs, in parallel.
template <typename RowFn>
void MapRows(const Layout& layout, const RowFn& rowFn) {
  ForEachPart(layout.rows, PartsFor(layout.rows * layout.columns), [&](int64_t begin, int64_t end, int) {
    for (int64_t row = begin; row < end; ++row) rowFn(row);
  });
}

// The attributes an op of this file has (each op has epsilon; the others where named).
struct KernelAttributes {
  float epsilon = 0;
  bool relu = false;
  int64_t pool[3] = {1, 1, 1};
  int64_t strides[3] = {1, 1, 1};
  int64_t padding[3] = {0, 0, 0};
};

void* CreateKernel(TF_OpKernelConstruction* construction) {
  auto* kernel = new KernelAttributes;
  TF_Status* status = TF_NewStatus();
  if (TF_OpKernelConstruction_HasAttr(construction, "epsilon", status)) TF_OpKernelConstruction_GetAttrFloat(construction, "epsilon", &kernel->epsilon, status);
  if (TF_GetCode(status) == TF_OK && TF_OpKernelConstruction_HasAttr(construction, "relu", status)) {
    TF_OpKernelConstruction_GetAttrBool(construction, "relu", reinterpret_cast<unsigned char*>(&kernel->relu), status);
  }
  if (TF_GetCode(status) == TF_OK && TF_OpKernelConstruction_HasAttr(construction, "pool", status)) {
    TF_OpKernelConstruction_GetAttrInt64List(construction, "pool", kernel->pool, 3, status);
  }
  if (TF_GetCode(status) == TF_OK && TF_OpKernelConstruction_HasAttr(construction, "strides", status)) {
    TF_OpKernelConstruction_GetAttrInt64List(construction, "strides", kernel->strides, 3, status);
  }
  if (TF_GetCode(status) == TF_OK && TF_OpKernelConstruction_HasAttr(construction, "padding", status)) {
    TF_OpKernelConstruction_GetAttrInt64List(construction, "padding", kernel->padding, 3, status);
  }
  if (TF_GetCode(status) != TF_OK) TF_OpKernelConstruction_Failure(construction, status);
  TF_DeleteStatus(status);
  return kernel;
}

void DeleteKernel(void* kernel) { delete static_cast<KernelAttributes*>(kernel); }

// Inputs 0..count-1 into `inputs`; false (the failure already reported) when one cannot be read.
bool ReadInputs(Tensors* tensors, TF_OpKernelContext* context, TF_Status* status, int count, TF_Tensor** inputs) {
  for (int i = 0; i < count; ++i) {
    inputs[i] = tensors->Input(context, i, status);
    if (!inputs[i]) return false;
  }
  return true;
}

// The training ops' outputs: one of x's shape and two of one value per z;
// false (the failure already reported) when one cannot be allocated.
bool AllocateTrainingOutputs(Tensors* tensors, TF_OpKernelContext* context, TF_Status* status, TF_Tensor* x, const Layout& layout, float** full, float** firstPerZ, float** secondPerZ) {
  *full = tensors->Output(context, 0, DimsOf(x), status);
  *firstPerZ = *full ? tensors->Output(context, 1, {layout.depth}, status) : nullptr;
  *secondPerZ = *firstPerZ ? tensors->Output(context, 2, {layout.depth}, status) : nullptr;
  return *secondPerZ != nullptr;
}

// Inference's per-z scale and shift from the moving statistics, in the
// float32 steps Keras' TensorFlow backend takes (rsqrt, times gamma; beta -
// mean * that).
void InferenceScaleShift(const Layout& layout, TF_Tensor* gamma, TF_Tensor* beta, TF_Tensor* mean, TF_Tensor* variance, float epsilon, std::vector<double>* scale, std::vector<double>* shift) {
  scale->resize(layout.depth);
  shift->resize(layout.depth);
  for (int64_t z = 0; z < layout.depth; ++z) {
    const float s = static_cast<float>(1.0 / std::sqrt(static_cast<double>(Data(variance)[z] + epsilon))) * Data(gamma)[z];
    (*scale)[z] = s;
    (*shift)[z] = Data(beta)[z] - Data(mean)[z] * s;
  }
}

// y = (x - mean) * gamma / sqrt(variance + epsilon) + beta with the batch's
// mean and biased variance per z, which are outputs 1 and 2 (Keras' moving
// averages use the biased variance).
void BatchNormTraining(const KernelAttributes& kernel, TF_OpKernelContext* context, TF_Status* status, Tensors& tensors) {
  const char* op = "CellfinderBatchNormTraining";
  const float epsilon = kernel.epsilon;
  TF_Tensor* inputs[3];
  if (!ReadInputs(&tensors, context, status, 3, inputs)) return;
  TF_Tensor *x = inputs[0], *gamma = inputs[1], *beta = inputs[2];
  Layout layout;
  if (ReadLayout(context, status, op, x, {gamma, beta}, &layout)) {
    const float* input = Data(x);
    const int64_t columns = layout.columns;
    std::vector<std::vector<double>> sums(1);
    SumPerZ(layout, 1, [&](int64_t row, double* acc) {
      const float* values = input + row * columns;
      for (int64_t j = 0; j < columns; ++j) acc[j] += values[j];
    }, &sums);
    std::vector<double> mean(layout.depth);
    for (int64_t z = 0; z < layout.depth; ++z) mean[z] = sums[0][z] / static_cast<double>(layout.count);
    const std::vector<float> meanColumn = PerColumn(layout, mean);
    SumPerZ(layout, 1, [&](int64_t row, double* acc) {
      const float* values = input + row * columns;
      for (int64_t j = 0; j < columns; ++j) {
        const float centred = values[j] - meanColumn[j];
        acc[j] += static_cast<double>(centred) * centred;
      }
    }, &sums);
    std::vector<double> variance(layout.depth), scale(layout.depth), offset(layout.depth);
    const float* gammaValues = Data(gamma);
    const float* betaValues = Data(beta);
    for (int64_t z = 0; z < layout.depth; ++z) {
      variance[z] = sums[0][z] / static_cast<double>(layout.count);
      scale[z] = gammaValues[z] / std::sqrt(static_cast<double>(static_cast<float>(variance[z])) + epsilon);
      offset[z] = betaValues[z];
    }
    const std::vector<float> scaleColumn = PerColumn(layout, scale);
    const std::vector<float> offsetColumn = PerColumn(layout, offset);
    float *y, *meanOut, *varianceOut;
    if (AllocateTrainingOutputs(&tensors, context, status, x, layout, &y, &meanOut, &varianceOut)) {
      for (int64_t z = 0; z < layout.depth; ++z) {
        meanOut[z] = static_cast<float>(mean[z]);
        varianceOut[z] = static_cast<float>(variance[z]);
      }
      MapRows(layout, [&](int64_t row) {
        const float* values = input + row * columns;
        float* out = y + row * columns;
        for (int64_t j = 0; j < columns; ++j) out[j] = (values[j] - meanColumn[j]) * scaleColumn[j] + offsetColumn[j];
      });
    }
  }
}

// The gradient of BatchNormTraining given dy, x and its mean and variance:
// dx = a dy + b (x - mean) + k per z, with a = gamma rstd, b = -a rstd^2
// mean(dy (x - mean)), k = -a mean(dy); dgamma = rstd sum(dy (x - mean)),
// dbeta = sum(dy).
void BatchNormTrainingGrad(const KernelAttributes& kernel, TF_OpKernelContext* context, TF_Status* status, Tensors& tensors) {
  const char* op = "CellfinderBatchNormTrainingGrad";
  const float epsilon = kernel.epsilon;
  TF_Tensor* inputs[5];
  if (!ReadInputs(&tensors, context, status, 5, inputs)) return;
  TF_Tensor *dy = inputs[0], *x = inputs[1], *mean = inputs[2], *variance = inputs[3], *gamma = inputs[4];
  Layout layout;
  if (!SameShape(dy, x)) {
    Fail(context, status, op, "dy and x must have the same shape");
  } else if (ReadLayout(context, status, op, x, {mean, variance, gamma}, &layout)) {
    const float* gradient = Data(dy);
    const float* input = Data(x);
    const int64_t columns = layout.columns;
    std::vector<double> meanValues(Data(mean), Data(mean) + layout.depth);
    const std::vector<float> meanColumn = PerColumn(layout, meanValues);
    std::vector<std::vector<double>> sums(2);
    SumPerZ(layout, 2, [&](int64_t row, double* acc) {
      const float* dyRow = gradient + row * columns;
      const float* xRow = input + row * columns;
      double* accCentred = acc + columns;
      for (int64_t j = 0; j < columns; ++j) {
        acc[j] += dyRow[j];
        accCentred[j] += static_cast<double>(dyRow[j]) * (xRow[j] - meanColumn[j]);
      }
    }, &sums);
    const std::vector<double>& sumDy = sums[0];
    const std::vector<double>& sumDyCentred = sums[1];
    const double count = static_cast<double>(layout.count);
    std::vector<double> a(layout.depth), b(layout.depth), k(layout.depth);
    float *dx, *dgamma, *dbeta;
    if (AllocateTrainingOutputs(&tensors, context, status, x, layout, &dx, &dgamma, &dbeta)) {
      for (int64_t z = 0; z < layout.depth; ++z) {
        const double rstd = 1.0 / std::sqrt(static_cast<double>(Data(variance)[z]) + epsilon);
        a[z] = Data(gamma)[z] * rstd;
        b[z] = -a[z] * rstd * rstd * sumDyCentred[z] / count;
        k[z] = -a[z] * sumDy[z] / count;
        dgamma[z] = static_cast<float>(sumDyCentred[z] * rstd);
        dbeta[z] = static_cast<float>(sumDy[z]);
      }
      const std::vector<float> aColumn = PerColumn(layout, a), bColumn = PerColumn(layout, b), kColumn = PerColumn(layout, k);
      MapRows(layout, [&](int64_t row) {
        const float* dyRow = gradient + row * columns;
        const float* xRow = input + row * columns;
        float* out = dx + row * columns;
        for (int64_t j = 0; j < columns; ++j) out[j] = aColumn[j] * dyRow[j] + bColumn[j] * (xRow[j] - meanColumn[j]) + kColumn[j];
      });
    }
  }
}

// As TensorFlow's Relu: a NaN stays NaN (a diverged model must not look like a working one).
inline float Relu(float value) { return value < 0.0f ? 0.0f : value; }

// Inference: y = x * s + (beta - mean * s) with s = gamma / sqrt(variance +
// epsilon), the moving statistics, as Keras computes it; then, in one pass,
// the shortcut added (CellfinderBatchNormAddRelu, input 5) and ReLU (always
// there, and with the attribute relu in CellfinderBatchNormInference).
void BatchNormInference(const KernelAttributes& kernel, TF_OpKernelContext* context, TF_Status* status, Tensors& tensors) {
  const bool withShortcut = TF_NumInputs(context) == 6;
  const char* op = withShortcut ? "CellfinderBatchNormAddRelu" : "CellfinderBatchNormInference";
  const bool relu = withShortcut || kernel.relu;
  TF_Tensor* inputs[6] = {nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  if (!ReadInputs(&tensors, context, status, withShortcut ? 6 : 5, inputs)) return;
  TF_Tensor *x = inputs[0], *gamma = inputs[1], *beta = inputs[2], *mean = inputs[3], *variance = inputs[4], *shortcut = inputs[5];
  Layout layout;
  if (withShortcut && !SameShape(x, shortcut)) {
    Fail(context, status, op, "x and the shortcut must have the same shape");
  } else if (ReadLayout(context, status, op, x, {gamma, beta, mean, variance}, &layout)) {
    std::vector<double> scale, shift;
    InferenceScaleShift(layout, gamma, beta, mean, variance, kernel.epsilon, &scale, &shift);
    const std::vector<float> scaleColumn = PerColumn(layout, scale), shiftColumn = PerColumn(layout, shift);
    const float* input = Data(x);
    const float* added = withShortcut ? Data(shortcut) : nullptr;
    const int64_t columns = layout.columns;
    float* y = tensors.Output(context, 0, DimsOf(x), status);
    if (y) {
      MapRows(layout, [&](int64_t row) {
        const float* values = input + row * columns;
        float* out = y + row * columns;
        if (added) {
          const float* shortcutRow = added + row * columns;
          for (int64_t j = 0; j < columns; ++j) {
            const float sum = (values[j] * scaleColumn[j] + shiftColumn[j]) + shortcutRow[j];
            out[j] = Relu(sum);
          }
        } else if (relu) {
          for (int64_t j = 0; j < columns; ++j) {
            const float value = values[j] * scaleColumn[j] + shiftColumn[j];
            out[j] = Relu(value);
          }
        } else {
          for (int64_t j = 0; j < columns; ++j) out[j] = values[j] * scaleColumn[j] + shiftColumn[j];
        }
      });
    }
  }
}

// Inference's first block: batch norm (moving statistics), ReLU and a 'valid'
// max pool (attributes pool and strides, (y, x, z)) in one pass, so conv1's
// large output is read once and its normalised copy never written: ReLU and
// max commute, so each window's largest normalised value is taken, then ReLU.
// A NaN in a window makes its maximum NaN (TensorFlow's MaxPool3D keeps or
// drops it depending on where in the window it is).
void BatchNormReluMaxPool(const KernelAttributes& kernel, TF_OpKernelContext* context, TF_Status* status, Tensors& tensors) {
  const char* op = "CellfinderBatchNormReluMaxPool";
  TF_Tensor* inputs[5];
  if (!ReadInputs(&tensors, context, status, 5, inputs)) return;
  TF_Tensor *x = inputs[0], *gamma = inputs[1], *beta = inputs[2], *mean = inputs[3], *variance = inputs[4];
  Layout layout;
  if (ReadLayout(context, status, op, x, {gamma, beta, mean, variance}, &layout)) {
    const std::vector<int64_t> in = DimsOf(x);
    std::vector<int64_t> out = in;
    bool fits = true;
    for (int axis = 0; axis < 3; ++axis) {
      const int64_t pool = kernel.pool[axis], stride = kernel.strides[axis];
      fits = fits && pool >= 1 && stride >= 1 && in[axis + 1] >= pool;
      out[axis + 1] = fits ? (in[axis + 1] - pool) / stride + 1 : 0;
    }
    if (!fits) {
      Fail(context, status, op, "the pool window must fit in the input (valid padding) and pool and strides be at least 1");
    } else {
      std::vector<double> scaleValues, shiftValues;
      InferenceScaleShift(layout, gamma, beta, mean, variance, kernel.epsilon, &scaleValues, &shiftValues);
      const std::vector<float> scale(scaleValues.begin(), scaleValues.end()), shift(shiftValues.begin(), shiftValues.end());
      float* y = tensors.Output(context, 0, out, status);
      if (y) {
        const float* input = Data(x);
        const int64_t channels = layout.channels;
        const int64_t rowsOut = out[0] * out[1];  // (batch, y) rows of output
        const int64_t values = rowsOut * out[2] * out[3] * channels * kernel.pool[0] * kernel.pool[1] * kernel.pool[2];
        ForEachPart(rowsOut, PartsFor(values), [&](int64_t begin, int64_t end, int) {
          std::vector<float> best(channels);
          for (int64_t row = begin; row < end; ++row) {
            const int64_t b = row / out[1], oy = row % out[1];
            for (int64_t ox = 0; ox < out[2]; ++ox) {
              for (int64_t oz = 0; oz < out[3]; ++oz) {
                for (int64_t c = 0; c < channels; ++c) best[c] = -INFINITY;
                for (int64_t wy = 0; wy < kernel.pool[0]; ++wy) {
                  for (int64_t wx = 0; wx < kernel.pool[1]; ++wx) {
                    for (int64_t wz = 0; wz < kernel.pool[2]; ++wz) {
                      const int64_t iy = oy * kernel.strides[0] + wy, ix = ox * kernel.strides[1] + wx, iz = oz * kernel.strides[2] + wz;
                      const float* voxel = input + (((b * in[1] + iy) * in[2] + ix) * in[3] + iz) * channels;
                      const float s = scale[iz], t = shift[iz];
                      for (int64_t c = 0; c < channels; ++c) {
                        const float value = voxel[c] * s + t;
                        best[c] = value > best[c] || std::isnan(value) ? value : best[c];
                      }
                    }
                  }
                }
                float* target = y + (((b * out[1] + oy) * out[2] + ox) * out[3] + oz) * channels;
                for (int64_t c = 0; c < channels; ++c) target[c] = Relu(best[c]);
              }
            }
          }
        });
      }
    }
  }
}

// Inference's convolutions where oneDNN's Conv3D is slow: conv1 (two input
// channels, so its inner product is 2 values long: 240 of this 2-core AVX-512
// machine's ~490 GFLOP/s), the strided ones, and the layers whose output has
// only a few positions per cube (ResNet units 4 and 5: 3x3x2 and 2x2x1),
// where oneDNN cannot block over positions and multiplies the zero padding
// too (at 3x3x2 a 3x3x3 kernel reaches the input with 40% of its taps).
//
// Direct convolution, one output position at a time for a group of Cubes
// cubes (the batch's, so this is for batches of tens of cubes, as inference
// has): the taps that reach the input (zero padding's never run) x input
// channels are summed as fused multiply-adds into registers holding
// FilterVectors vectors of filters for each cube, so each weight vector
// loaded serves every cube of the group and each input value (broadcast)
// every filter vector. The kernel is read as blocks of the filters a group
// sums (packed that way first when it has more filters), so a block's
// weights are one contiguous run: read across the kernel's rows of 256-512
// filters instead, unit 4's 3x3x2 layer ran at a third of the speed. Sums
// are float32 in tap order, as oneDNN's are (equal to its results here).
struct Tap {
  int64_t input;   // offset in one cube of (y, x, z, channels)
  int64_t kernel;  // row of the kernel (taps, filters)
};

template <int Width, int FilterVectors, int Cubes>
__attribute__((always_inline)) inline void ConvolveCubes(const float* const* cubes, const std::vector<Tap>& taps, const float* block, int count, float* const* outputs) {
  typedef float Vector __attribute__((vector_size(Width * sizeof(float))));
  constexpr int64_t kBlockWidth = Width * FilterVectors;
  Vector sums[Cubes][FilterVectors];
  for (int c = 0; c < Cubes; ++c) {
    for (int v = 0; v < FilterVectors; ++v) sums[c][v] = Vector{};
  }
  for (const Tap& tap : taps) {
    Vector w[FilterVectors];
    const float* weights = block + tap.kernel * kBlockWidth;
    for (int v = 0; v < FilterVectors; ++v) std::memcpy(&w[v], weights + v * Width, sizeof(Vector));
    for (int c = 0; c < Cubes; ++c) {
      const float value = cubes[c][tap.input];
      for (int v = 0; v < FilterVectors; ++v) sums[c][v] += value * w[v];
    }
  }
  for (int c = 0; c < count; ++c) std::memcpy(outputs[c], sums[c], sizeof(sums[c]));
}

// One output position of every cube: per block of filters, the cubes Cubes
// at a time (the last group repeats its last cube to fill the registers and
// writes only its own), so a block's weights for this position's taps are
// read from the cache once per group.
struct PositionConvolution {
  const float* x;  // (batch, y, x, z, channels)
  int64_t batch, cubeValues;
  const std::vector<Tap>* taps;
  const float* blocks;  // the kernel as (filters / block width, rows, block width)
  int64_t rows, filters;
  float* output;  // (batch, positions, filters)
  int64_t positions, position;
};

template <int Width, int FilterVectors, int Cubes>
__attribute__((always_inline)) inline void ConvolvePosition(const PositionConvolution& c) {
  constexpr int64_t kBlockWidth = Width * FilterVectors;
  const float* cubes[Cubes];
  float* outputs[Cubes];
  for (int64_t block = 0; block < c.filters / kBlockWidth; ++block) {
    for (int64_t first = 0; first < c.batch; first += Cubes) {
      const int count = static_cast<int>(c.batch - first < Cubes ? c.batch - first : Cubes);
      for (int i = 0; i < Cubes; ++i) {
        const int64_t cube = first + (i < count ? i : count - 1);
        cubes[i] = c.x + cube * c.cubeValues;
        outputs[i] = c.output + (cube * c.positions + c.position) * c.filters + block * kBlockWidth;
      }
      ConvolveCubes<Width, FilterVectors, Cubes>(cubes, *c.taps, c.blocks + block * c.rows * kBlockWidth, count, outputs);
    }
  }
}

// One variant per instruction set, compiled for it: AVX-512 has 32 vector
// registers (6 cubes x 4 vectors of 16 filters accumulate, 4 hold weights),
// AVX2 and SSE 16 (6 x 2, 2).
__attribute__((target("avx512f,fma"))) void ConvolvePositionAvx512(const PositionConvolution& c) { ConvolvePosition<16, 4, 6>(c); }
__attribute__((target("avx2,fma"))) void ConvolvePositionAvx2(const PositionConvolution& c) { ConvolvePosition<8, 2, 6>(c); }
void ConvolvePositionSse(const PositionConvolution& c) { ConvolvePosition<4, 2, 6>(c); }

struct ConvolutionVariant {
  void (*convolvePosition)(const PositionConvolution&);
  int64_t blockWidth;  // filters per block
};

// The widest variant this CPU runs; CELLFINDER_RETRAIN_CONVOLUTION_ISA=avx2
// or sse picks a narrower one (the tests run each).
ConvolutionVariant ConvolutionForThisCpu() {
  __builtin_cpu_init();
  const char* asked = std::getenv("CELLFINDER_RETRAIN_CONVOLUTION_ISA");
  const bool any = !asked || !*asked, sse = asked && std::strcmp(asked, "sse") == 0;
  if (any && __builtin_cpu_supports("avx512f")) return {ConvolvePositionAvx512, 64};
  if (!sse && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {ConvolvePositionAvx2, 16};
  return {ConvolvePositionSse, 8};
}

// Filters per block of the widest variant: the op needs a multiple.
constexpr int64_t kFilterMultiple = 64;

// x (batch, y, x, z, channels), kernel (ky, kx, kz, channels, filters) ->
// (batch, out y, out x, out z, filters): Keras' ZeroPadding3D(padding) then a
// 'valid' Conv3D with strides (attributes padding and strides, (y, x, z)).
void Convolution(const KernelAttributes& attributes, TF_OpKernelContext* context, TF_Status* status, Tensors& tensors) {
  const char* op = "CellfinderConvolution";
  TF_Tensor* inputs[2];
  if (!ReadInputs(&tensors, context, status, 2, inputs)) return;
  const std::vector<int64_t> in = DimsOf(inputs[0]), k = DimsOf(inputs[1]);
  if (in.size() != 5 || k.size() != 5) {
    Fail(context, status, op, "the input must be 5-D (batch, y, x, z, channels) and the kernel 5-D (y, x, z, channels, filters)");
    return;
  }
  if (k[3] != in[4] || k[4] % kFilterMultiple != 0) {
    Fail(context, status, op, "the kernel's axis 3 must equal the input's channels and its filters be a multiple of 64");
    return;
  }
  int64_t out[3];
  for (int axis = 0; axis < 3; ++axis) {
    const int64_t padded = in[axis + 1] + 2 * attributes.padding[axis];
    if (attributes.strides[axis] < 1 || attributes.padding[axis] < 0 || padded < k[axis]) {
      Fail(context, status, op, "strides must be at least 1, padding at least 0, and the kernel must fit in the padded input");
      return;
    }
    out[axis] = (padded - k[axis]) / attributes.strides[axis] + 1;
  }
  const int64_t batch = in[0], channels = in[4], filters = k[4], positions = out[0] * out[1] * out[2];
  float* y = tensors.Output(context, 0, {batch, out[0], out[1], out[2], filters}, status);
  if (!y) return;
  static const ConvolutionVariant variant = ConvolutionForThisCpu();
  const int64_t rows = k[0] * k[1] * k[2] * channels, width = variant.blockWidth;
  const float* kernel = Data(inputs[1]);
  // The input index a kernel tap reads for output index o on an axis; -1 where it reads the zero padding.
  const auto inputAt = [&](int axis, int64_t o, int64_t tap) {
    const int64_t i = o * attributes.strides[axis] + tap - attributes.padding[axis];
    return i >= 0 && i < in[axis + 1] ? i : -1;
  };
  std::vector<float> packed;
  if (filters > width) {
    // Only the taps some output position reaches the input with (unit 5's 2x2x1 uses 9 of 27).
    std::vector<bool> reaches[3];
    for (int axis = 0; axis < 3; ++axis) {
      reaches[axis].assign(k[axis], false);
      for (int64_t o = 0; o < out[axis]; ++o) {
        for (int64_t tap = 0; tap < k[axis]; ++tap) {
          if (inputAt(axis, o, tap) >= 0) reaches[axis][tap] = true;
        }
      }
    }
    packed.resize(static_cast<size_t>(rows * filters));
    for (int64_t block = 0; block < filters / width; ++block) {
      for (int64_t row = 0; row < rows; ++row) {
        const int64_t spatial = row / channels;
        if (!reaches[0][spatial / (k[1] * k[2])] || !reaches[1][(spatial / k[2]) % k[1]] || !reaches[2][spatial % k[2]]) continue;
        std::memcpy(&packed[(block * rows + row) * width], kernel + row * filters + block * width, sizeof(float) * width);
      }
    }
  }
  const float* blocks = filters > width ? packed.data() : kernel;
  // PartsFor is sized for passes over memory (a thread per 256k values); a
  // multiply-add in registers costs far less: a thread per 16M of them.
  const int64_t multiplyAdds = batch * positions * filters * rows;
  ForEachPart(positions, PartsFor(multiplyAdds / 64), [&](int64_t begin, int64_t end, int) {
    std::vector<Tap> taps;
    for (int64_t position = begin; position < end; ++position) {
      const int64_t at[3] = {position / (out[1] * out[2]), (position / out[2]) % out[1], position % out[2]};
      // The taps that reach the input, in the kernel's row order.
      taps.clear();
      for (int64_t ky = 0; ky < k[0]; ++ky) {
        const int64_t iy = inputAt(0, at[0], ky);
        if (iy < 0) continue;
        for (int64_t kx = 0; kx < k[1]; ++kx) {
          const int64_t ix = inputAt(1, at[1], kx);
          if (ix < 0) continue;
          for (int64_t kz = 0; kz < k[2]; ++kz) {
            const int64_t iz = inputAt(2, at[2], kz);
            if (iz < 0) continue;
            for (int64_t ci = 0; ci < channels; ++ci) taps.push_back({((iy * in[2] + ix) * in[3] + iz) * channels + ci, ((ky * k[1] + kx) * k[2] + kz) * channels + ci});
          }
        }
      }
      variant.convolvePosition({Data(inputs[0]), batch, in[1] * in[2] * in[3] * channels, &taps, blocks, rows, filters, y, positions, position});
    }
  });
}

// A kernel's compute function as TensorFlow calls it: the attributes, a
// status for failures and the tensors it reads and allocates, freed after.
template <void (*Body)(const KernelAttributes&, TF_OpKernelContext*, TF_Status*, Tensors&)>
void Compute(void* self, TF_OpKernelContext* context) {
  TF_Status* status = TF_NewStatus();
  {
    Tensors tensors;
    Body(*static_cast<KernelAttributes*>(self), context, status, tensors);
  }
  TF_DeleteStatus(status);
}

// Output 0 has input 0's shape; outputs 1.. have input `perZInput`'s (one value per z).
template <int perZInput>
void ShapeLikeInputs(TF_ShapeInferenceContext* context, TF_Status* status) {
  TF_ShapeHandle* shape = TF_NewShapeHandle();
  TF_ShapeInferenceContextGetInput(context, 0, shape, status);
  if (TF_GetCode(status) == TF_OK) TF_ShapeInferenceContextSetOutput(context, 0, shape, status);
  if (perZInput > 0) {
    TF_ShapeInferenceContextGetInput(context, perZInput, shape, status);
    for (int output = 1; output < 3 && TF_GetCode(status) == TF_OK; ++output) TF_ShapeInferenceContextSetOutput(context, output, shape, status);
  }
  TF_DeleteShapeHandle(shape);
}

// The pooled output's shape depends on attributes: left unknown (eager execution does not ask).
void UnknownShape(TF_ShapeInferenceContext* context, TF_Status* status) { TF_ShapeInferenceContextSetUnknownShape(context, status); }

struct OpSpec {
  const char* name;
  std::vector<const char*> inputs;
  std::vector<const char*> outputs;
  std::vector<const char*> attrs;
  void (*shape)(TF_ShapeInferenceContext*, TF_Status*);
  void (*compute)(void*, TF_OpKernelContext*);
};

void Register(const OpSpec& spec) {
  TF_Status* status = TF_NewStatus();
  TF_OpDefinitionBuilder* builder = TF_NewOpDefinitionBuilder(spec.name);
  for (const char* input : spec.inputs) TF_OpDefinitionBuilderAddInput(builder, input);
  for (const char* output : spec.outputs) TF_OpDefinitionBuilderAddOutput(builder, output);
  for (const char* attr : spec.attrs) TF_OpDefinitionBuilderAddAttr(builder, attr);
  TF_OpDefinitionBuilderSetShapeInferenceFunction(builder, spec.shape);
  TF_RegisterOpDefinition(builder, status);
  if (TF_GetCode(status) == TF_OK) {
    TF_KernelBuilder* kernel = TF_NewKernelBuilder(spec.name, "CPU", CreateKernel, spec.compute, DeleteKernel);
    TF_RegisterKernelBuilder(spec.name, kernel, status);
  }
  // Not fatal: without these ops the engine runs batch norm as TensorFlow ops (nativeKernels.ts probes for them).
  if (TF_GetCode(status) != TF_OK) std::fprintf(stderr, "cellfinder-retrain: could not register %s: %s\n", spec.name, TF_Message(status));
  TF_DeleteStatus(status);
}

[[maybe_unused]] const bool registered = [] {
  Register({"CellfinderBatchNormTraining", {"x: float", "gamma: float", "beta: float"}, {"y: float", "mean: float", "variance: float"}, {"epsilon: float"}, ShapeLikeInputs<1>, Compute<BatchNormTraining>});
  Register({"CellfinderBatchNormTrainingGrad", {"dy: float", "x: float", "mean: float", "variance: float", "gamma: float"}, {"dx: float", "dgamma: float", "dbeta: float"}, {"epsilon: float"}, ShapeLikeInputs<2>, Compute<BatchNormTrainingGrad>});
  Register({"CellfinderBatchNormInference", {"x: float", "gamma: float", "beta: float", "mean: float", "variance: float"}, {"y: float"}, {"epsilon: float", "relu: bool"}, ShapeLikeInputs<0>, Compute<BatchNormInference>});
  Register({"CellfinderBatchNormReluMaxPool", {"x: float", "gamma: float", "beta: float", "mean: float", "variance: float"}, {"y: float"}, {"epsilon: float", "pool: list(int)", "strides: list(int)"}, UnknownShape, Compute<BatchNormReluMaxPool>});
  Register({"CellfinderConvolution", {"x: float", "kernel: float"}, {"y: float"}, {"strides: list(int)", "padding: list(int)"}, UnknownShape, Compute<Convolution>});
  Register({"CellfinderBatchNormAddRelu", {"x: float", "gamma: float", "beta: float", "mean: float", "variance: float", "shortcut: float"}, {"y: float"}, {"epsilon: float"}, ShapeLikeInputs<0>, Compute<BatchNormInference>});
  return true;
}();

}  // namespace
