/// \file
/// Umbrella header: everything host-side.
#pragma once

#include "attention.hpp"
#include "core/config.hpp"
#include "core/error.hpp"
#include "core/executor.hpp"
#include "core/options.hpp"
#include "core/tensor_view.hpp"
#include "core/types.hpp"
#include "variants/custom.hpp"
#include "variants/feature_maps.hpp"
#include "variants/hip.hpp"
#include "variants/kernelized_rpe.hpp"
#include "variants/linear.hpp"
#include "variants/neighborhood.hpp"
#include "variants/power.hpp"
#include "variants/radial.hpp"
#include "variants/routing.hpp"
#include "variants/softmax.hpp"
