# Finds the dependencies of elastic's targets. Shared by the build tree and the
# installed package config so both resolve the same targets.
#   elastic::elastic (the engine) needs the packages below, all required;
#   elastic::data (the input pipeline) adds libjpeg, libpng and libmatio;
#   elastic::onnx (the ONNX importer) adds libonnx and protobuf.
# The last two are optional here: elastic_data_FOUND and elastic_onnx_FOUND say
# whether their packages are present, so that a project linking the engine alone
# needs none of them (find_package(elastic COMPONENTS data onnx) requires them).
include(CMakeFindDependencyMacro)
find_dependency(dnnl)            # DNNL::dnnl (oneDNN 2.x)
find_dependency(Eigen3)          # Eigen3::Eigen
find_dependency(fmt)             # fmt::fmt
find_dependency(xtensor)         # xtensor
find_dependency(OpenMP)          # OpenMP::OpenMP_CXX: oneDNN's threading runtime
find_dependency(ZLIB)            # ZLIB::ZLIB: .gz dataset files
find_dependency(nlohmann_json)   # nlohmann_json::nlohmann_json: safetensors headers, profiles

find_package(JPEG QUIET)         # JPEG::JPEG (libjpeg-turbo)
find_package(PNG QUIET)          # PNG::PNG
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND AND NOT TARGET PkgConfig::MATIO)
  pkg_check_modules(MATIO QUIET IMPORTED_TARGET GLOBAL matio)  # Stanford Dogs' .mat lists
endif()
if(TARGET JPEG::JPEG AND TARGET PNG::PNG AND TARGET PkgConfig::MATIO)
  set(elastic_data_FOUND TRUE)
else()
  set(elastic_data_FOUND FALSE)
endif()

# ONNX's config links protobuf::libprotobuf without looking for it, so Protobuf comes first.
find_package(Protobuf QUIET)     # protobuf::libprotobuf
if(TARGET protobuf::libprotobuf)
  find_package(ONNX QUIET)       # onnx, onnx_proto (libonnx-dev)
endif()
if(TARGET onnx AND TARGET onnx_proto AND TARGET protobuf::libprotobuf)
  set(elastic_onnx_FOUND TRUE)
else()
  set(elastic_onnx_FOUND FALSE)
endif()
