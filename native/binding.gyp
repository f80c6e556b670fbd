{
  # Builds softpress_native against the system libtorch (Debian libtorch-dev) or, when the
  # LIBTORCH environment variable names a libtorch folder (include/, lib/), against that one.
  "targets": [
    {
      "target_name": "softpress_native",
      "sources": ["src/addon.cc", "src/dispatch.cc", "src/autograd.cc", "src/c10d.cc", "src/fused.cc", "src/quant.cc"],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "<!@(node torch-paths.cjs include)"
      ],
      "libraries": ["<!@(node torch-paths.cjs libs)"],
      "defines": ["NAPI_EXPERIMENTAL", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-std=gnu++20"],
      "cflags_cc": ["<!@(node torch-paths.cjs std)", "-fexceptions", "-frtti", "-O2", "-Wno-unused-parameter"]
    }
  ]
}
