// Umbrella header: the whole library. Each header below also compiles alone.
#pragma once

#include "elastic/core/context.hpp"
#include "elastic/core/error.hpp"
#include "elastic/core/random.hpp"
#include "elastic/core/tensor.hpp"
#include "elastic/core/timer.hpp"
#include "elastic/graph/backward_plan.hpp"
#include "elastic/graph/graph.hpp"
#include "elastic/graph/node.hpp"
#include "elastic/graph/param.hpp"
#include "elastic/layers/conv.hpp"
