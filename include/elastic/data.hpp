// The input pipeline's umbrella header (CMake target elastic::data): image
// decoding, transforms, the datasets and the prefetching loader. Kept apart
// from elastic.hpp so that users of the engine alone need no image codecs.
#pragma once

#include "elastic/data/datasets.hpp"
#include "elastic/data/idx.hpp"
#include "elastic/data/image.hpp"
#include "elastic/data/loader.hpp"
#include "elastic/data/transforms.hpp"
