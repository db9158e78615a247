#!/usr/bin/env python3
"""Writes the seed corpora for the NBD fuzz targets into corpus/<target>/.

The seeds are committed; rerun this script only to change them.
Layouts are described at the top of nbd_handshake_fuzz.cc and
nbd_request_fuzz.cc.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

IHAVEOPT = 0x49484156454F5054
REQUEST_MAGIC = 0x25609513
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO = 1, 2, 3, 6, 7
OPT_STRUCTURED_REPLY, OPT_LIST_META, OPT_SET_META = 8, 9, 10
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_WZ, CMD_BS = range(8)
FLAG_FUA, FLAG_NO_HOLE, FLAG_DF, FLAG_REQ_ONE, FLAG_FAST_ZERO = 1, 2, 4, 8, 16
ALL_CAPS = 0x3E  # can_flush, can_trim, can_zero, can_fast_zero, can_cache
NAME = b"fuzz-export"


def opt(code, data=b""):
    return struct.pack(">QII", IHAVEOPT, code, len(data)) + data


def info(name, infos=()):
    return struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos)) + b"".join(
        struct.pack(">H", i) for i in infos)


def meta(name, queries):
    out = struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries))
    for q in queries:
        out += struct.pack(">I", len(q)) + q
    return out


def req(cmd, offset, length, flags=0, handle=1, payload=b""):
    return struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, handle, offset, length) + payload


def flags(no_zeroes=True):
    return struct.pack(">I", 3 if no_zeroes else 1)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def handshake_seeds():
    requests = (req(CMD_WRITE, 0, 16, FLAG_FUA, payload=b"x" * 16) + req(CMD_READ, 0, 4096, FLAG_DF) +
                req(CMD_WZ, 4096, 8192, FLAG_NO_HOLE | FLAG_FAST_ZERO) + req(CMD_TRIM, 0, 4096) +
                req(CMD_BS, 0, 65536, FLAG_REQ_ONE) + req(CMD_CACHE, 0, 4096) + req(CMD_FLUSH, 0, 0) +
                req(CMD_DISC, 0, 0))
    hdr = bytes([ALL_CAPS, 0])
    write("nbd_handshake", "go", hdr + flags() + opt(OPT_GO, info(NAME)) + requests)
    write("nbd_handshake", "go-empty-name", bytes([ALL_CAPS, 7]) + flags() + opt(OPT_GO, info(b"")) +
          req(CMD_READ, 0, 512))
    write("nbd_handshake", "structured-meta-go", bytes([ALL_CAPS, 1]) + flags() + opt(OPT_STRUCTURED_REPLY) +
          opt(OPT_LIST_META, meta(NAME, [])) + opt(OPT_SET_META, meta(NAME, [b"base:allocation"])) +
          opt(OPT_INFO, info(NAME, [1, 2, 3])) + opt(OPT_GO, info(NAME, [3])) + requests)
    write("nbd_handshake", "export-name", bytes([ALL_CAPS, 2]) + flags(False) + opt(OPT_EXPORT_NAME, NAME) +
          requests)
    write("nbd_handshake", "list-unknown-abort", bytes([0x01, 3]) + flags() + opt(OPT_LIST) +
          opt(0x77, b"abc") + opt(OPT_LIST_META, meta(b"", [b"base:", b"qemu:x"])) + opt(OPT_ABORT))
    # An oversize option (skipped, ERR_TOO_BIG) needs > 64 KiB of input to
    # complete; the unit tests cover it, the seed only starts one.
    write("nbd_handshake", "too-big-start", bytes([ALL_CAPS, 4]) + flags() +
          struct.pack(">QII", IHAVEOPT, OPT_INFO, 65537) + b"\0" * 256)
    write("nbd_handshake", "read-only-go", bytes([0x01 | ALL_CAPS, 5]) + flags() + opt(OPT_GO, info(NAME)) +
          req(CMD_WRITE, 0, 4, payload=b"abcd") + req(CMD_TRIM, 0, 4096))


def request_seeds():
    def limits(size, tx, structured=True, base=True, edge=False):
        return struct.pack(">QH", size, tx) + bytes([structured | (base << 1) | (edge << 7)])

    all_tx = 0x0DED  # HAS_FLAGS FLUSH FUA TRIM WRITE_ZEROES DF MULTI_CONN CACHE FAST_ZERO
    gib = 1 << 30
    seeds = {
        "read": req(CMD_READ, 4096, 65536, FLAG_DF) + limits(gib, all_tx),
        "write": req(CMD_WRITE, 0, 4096, FLAG_FUA) + limits(gib, all_tx),
        "write-past-end": req(CMD_WRITE, gib - 512, 4096) + limits(gib, all_tx),
        "write-too-big": req(CMD_WRITE, 0, (32 << 20) + 1) + limits(gib, all_tx),
        "write-zeroes": req(CMD_WZ, 0, 1 << 20, FLAG_FAST_ZERO | FLAG_NO_HOLE) + limits(gib, all_tx),
        "trim-read-only": req(CMD_TRIM, 0, 4096) + limits(gib, 0x0003),
        "block-status": req(CMD_BS, 0, 1 << 20, FLAG_REQ_ONE) + limits(gib, all_tx),
        "flush": req(CMD_FLUSH, 0, 0) + limits(gib, all_tx),
        # With the edge bit, the first size byte indexes the table of edge sizes.
        "overflow": req(CMD_READ, (1 << 64) - 100, 4096) + limits(7 << 56, all_tx, edge=True),
        "cache-edge-size": req(CMD_CACHE, 0, 4096) + limits(6 << 56, all_tx, base=False, edge=True),
    }
    for name, data in seeds.items():
        write("nbd_request", name, data)


if __name__ == "__main__":
    handshake_seeds()
    request_seeds()
