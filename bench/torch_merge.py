#!/usr/bin/python3
"""The PyTorch baseline for the merge benchmark: an N-way float64 mean, key by key, as a careful script would do it.

Reads safetensors with mmap + torch.frombuffer (no copies beyond the float64 conversion), accumulates each key in
float64, divides once, rounds to the output dtype and writes a valid safetensors file.

    python3 bench/torch_merge.py OUT.safetensors IN.safetensors IN.safetensors ...
"""
import json, mmap, struct, sys, time, warnings

import torch

# Read-only mappings are only ever read here.
warnings.filterwarnings("ignore", message="The given buffer is not writable")

DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def itemsize(dtype):
    return torch.empty(0, dtype=dtype).element_size()  # torch.dtype.itemsize is newer than Debian's torch


def open_checkpoint(path):
    f = open(path, "rb")
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    n = struct.unpack("<Q", m[:8])[0]
    header = json.loads(m[8:8 + n])
    header.pop("__metadata__", None)
    return m, 8 + n, header


def tensor(m, start, info):
    b, e = info["data_offsets"]
    t = torch.frombuffer(m, dtype=DTYPES[info["dtype"]], count=(e - b) // itemsize(DTYPES[info["dtype"]]), offset=start + b) if e > b \
        else torch.empty(0, dtype=DTYPES[info["dtype"]])
    return t.reshape(info["shape"])


def main():
    out, inputs = sys.argv[1], sys.argv[2:]
    began = time.perf_counter()
    models = [open_checkpoint(p) for p in inputs]
    keys = sorted(models[0][2])

    # The header is known up front, so each merged key is written as soon as it is computed (bounded memory).
    offset, meta = 0, {}
    for key in keys:
        info = models[0][2][key]
        is_float = info["dtype"] in ("F16", "BF16", "F32", "F64")
        dtype = torch.float16 if is_float else DTYPES[info["dtype"]]
        size = itemsize(dtype)
        for d in info["shape"]:
            size *= d
        meta[key] = {"dtype": "F16" if is_float else info["dtype"], "shape": info["shape"], "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(meta).encode()
    blob += b" " * (-len(blob) % 8)

    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for key in keys:
            first = models[0][2][key]
            if first["dtype"] not in ("F16", "BF16", "F32", "F64"):
                result = tensor(models[0][0], models[0][1], first)
            else:
                acc = torch.zeros(first["shape"], dtype=torch.float64)
                for m, start, header in models:
                    acc += tensor(m, start, header[key]).to(torch.float64)
                acc /= len(models)
                result = acc.to(torch.float16)
            if result.numel():
                f.write(result.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    took = time.perf_counter() - began
    total = sum(len(m) for m, _, _ in models)
    print(f"torch: {len(inputs)} files, {total / 1e9:.2f} GB in {took:.2f} s, {total / took / 1e9:.2f} GB/s, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
