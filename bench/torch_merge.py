#!/usr/bin/python3
"""The PyTorch peer of the merge benchmark: an N-way float64 mean as a careful script would write it.

Maps each safetensors file once (mmap + torch.frombuffer, no copies), and walks every key in tiles of TILE elements:
each model's tile is converted into one reused float64 buffer and added into one reused float64 accumulator, which is
divided once and rounded once into one reused output buffer, written straight from that buffer. Memory stays at a
few tiles plus one key of each input (unmapped once
done) whatever the number and size of the inputs. Non-float keys are copied from the first model.

    python3 bench/torch_merge.py OUT.safetensors IN.safetensors IN.safetensors ...
"""
import json, mmap, os, struct, sys, time, warnings

import torch

# Read-only mappings are only ever read here.
warnings.filterwarnings("ignore", message="The given buffer is not writable")

DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
FLOATS = ("F16", "BF16", "F32", "F64")
TILE = 1 << 20  # elements per tile: 8 MiB per float64 buffer


def itemsize(dtype):
    return torch.empty(0, dtype=dtype).element_size()  # torch.dtype.itemsize is newer than Debian's torch


def open_checkpoint(path):
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    m.madvise(mmap.MADV_SEQUENTIAL)
    n = struct.unpack("<Q", m[:8])[0]
    header = json.loads(m[8:8 + n])
    header.pop("__metadata__", None)
    return m, 8 + n, header


def flat(m, start, info):
    """A tensor's bytes as a flat tensor over the mapping (no copy)."""
    dtype = DTYPES[info["dtype"]]
    b, e = info["data_offsets"]
    return torch.frombuffer(m, dtype=dtype, count=(e - b) // itemsize(dtype), offset=start + b) if e > b else torch.empty(0, dtype=dtype)


def main():
    out, inputs = sys.argv[1], sys.argv[2:]
    torch.set_num_threads(os.cpu_count() or 1)
    began = time.perf_counter()
    models = [open_checkpoint(p) for p in inputs]
    keys = sorted(models[0][2])

    # The header is known up front, so every tile is written as soon as it is computed.
    offset, meta = 0, {}
    for key in keys:
        info = models[0][2][key]
        dtype = "F16" if info["dtype"] in FLOATS else info["dtype"]
        size = itemsize(DTYPES[dtype])
        for d in info["shape"]:
            size *= d
        meta[key] = {"dtype": dtype, "shape": info["shape"], "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(meta, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)

    acc = torch.empty(TILE, dtype=torch.float64)
    term = torch.empty(TILE, dtype=torch.float64)
    rounded = torch.empty(TILE, dtype=torch.float16)
    with open(out, "wb", buffering=0) as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for key in keys:
            first = models[0][2][key]
            if first["dtype"] not in FLOATS:
                f.write(flat(models[0][0], models[0][1], first).numpy().tobytes())
                continue
            sources = [flat(m, start, header[key]) for m, start, header in models]
            n = sources[0].numel()
            for lo in range(0, n, TILE):
                k = min(TILE, n - lo)
                a, t, r = acc[:k], term[:k], rounded[:k]
                a.copy_(sources[0][lo:lo + k])
                for s in sources[1:]:
                    t.copy_(s[lo:lo + k])
                    a.add_(t)
                a.div_(len(models))
                r.copy_(a)
                f.write(memoryview(r.numpy()).cast("B"))
            # Done with the key: unmap its pages (they stay in the page cache), so resident memory stays flat in N.
            for m, start, header in models:
                b, e = header[key]["data_offsets"]
                lo = (start + b) & ~(mmap.PAGESIZE - 1)
                if e > b:
                    m.madvise(mmap.MADV_DONTNEED, lo, start + e - lo)
    took = time.perf_counter() - began
    total = sum(len(m) for m, _, _ in models)
    print(f"torch: {len(inputs)} files, {total / 1e9:.2f} GB in {took:.2f} s, {total / took / 1e9:.2f} GB/s, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
