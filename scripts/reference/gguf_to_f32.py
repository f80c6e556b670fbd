"""Writes a copy of a GGUF file with every tensor dequantized to F32 by gguf.quants.dequantize
(the same weights smollm2_fp32_ref.py uses), all metadata kept but general.file_type = 0 (ALL_F32).
llama.cpp run on it multiplies F32 x F32 (no Q8 activation quantization), so - with an F32 KV
cache and flash attention off - it checks the numpy fp32 reference against llama.cpp's own graph.

    python3 gguf_to_f32.py IN.gguf OUT.gguf
"""

import sys

import numpy as np
import gguf
from gguf.quants import dequantize


def convert(src, dst):
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch=arch)
    for f in r.fields.values():
        if f.name == "general.architecture" or f.name.startswith("GGUF."):
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        val = f.contents()
        if f.name == "general.file_type":
            val = int(gguf.LlamaFileType.ALL_F32)
        w.add_key_value(f.name, val, vtype, sub_type=sub)
    for t in r.tensors:
        a = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        a = a.reshape([int(x) for x in reversed(t.shape)] if len(t.shape) > 1 else -1)
        w.add_tensor(t.name, np.ascontiguousarray(a), raw_dtype=gguf.GGMLQuantizationType.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    convert(sys.argv[1], sys.argv[2])
