#!/usr/bin/env python3
"""A minimal NBD client speaking the raw protocol over a unix socket.

It sends well-formed and malformed handshakes and requests, to check that a
server rejects bad input cleanly and keeps serving other clients.  All
numbers on the wire are big-endian (network byte order).

Usage:
    nbd_raw_client.py SOCKET CASE [--size BYTES] [--export NAME]

CASE is one of the names listed by --list-cases: malformed-input cases,
and the tools load, verify_log and idle (see their docstrings).  The script exits 0 when
the server behaved as expected, 1 with a message otherwise.
"""

import argparse
import os
import socket
import struct
import sys
import time

# Handshake.
NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1

# Options.
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10

# Option replies.
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR = 1 << 31
REP_ERR_UNSUP = REP_ERR + 1
REP_ERR_POLICY = REP_ERR + 2
REP_ERR_INVALID = REP_ERR + 3
REP_ERR_UNKNOWN = REP_ERR + 6
REP_ERR_TOO_BIG = REP_ERR + 9

INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3

# Transmission flags.
TF_HAS_FLAGS = 1 << 0
TF_READ_ONLY = 1 << 1

# Transmission.
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7
CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1
REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2

EPERM = 1
EIO = 5
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108

MAX_PAYLOAD = 32 * 1024 * 1024
IO_TIMEOUT = 30.0   # seconds to wait for any expected reply
EOF_TIMEOUT = 15.0  # seconds a server has to drop a connection


class Failure(Exception):
    pass


class Closed(Exception):
    """The server closed the connection."""


def check(cond, msg):
    if not cond:
        raise Failure(msg)


class Conn:
    """One connection.  Methods raise Closed on EOF or reset."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(IO_TIMEOUT)
        self.sock.connect(path)
        self.structured = False
        self.size = None
        self.tflags = None
        self.next_handle = 1

    def close(self):
        self.sock.close()

    def send(self, data):
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise Closed(str(e))

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            except ConnectionResetError as e:
                raise Closed(str(e))
            except socket.timeout:
                raise Failure("timed out after %.0fs waiting for %d bytes from the server"
                              % (self.sock.gettimeout(), n - len(buf)))
            if not chunk:
                raise Closed("EOF")
            buf += chunk
        return bytes(buf)

    def expect_eof(self, what):
        """The server must close the connection within EOF_TIMEOUT seconds.
        Any bytes it sends first are ignored."""
        deadline = time.monotonic() + EOF_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure("%s: server did not drop the connection within %.0fs"
                              % (what, EOF_TIMEOUT))
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return
            except socket.timeout:
                continue
            if not chunk:
                return

    # --- handshake ------------------------------------------------------

    def greeting(self):
        magic, opt_magic, hflags = struct.unpack(">QQH", self.recv_exact(18))
        check(magic == NBDMAGIC, "bad NBDMAGIC 0x%x" % magic)
        check(opt_magic == IHAVEOPT, "bad IHAVEOPT 0x%x (not newstyle)" % opt_magic)
        check(hflags & FLAG_FIXED_NEWSTYLE, "server is not fixed newstyle")
        return hflags

    def send_client_flags(self, flags):
        self.send(struct.pack(">I", flags))

    def send_option(self, opt, data=b"", magic=IHAVEOPT, length=None):
        if length is None:
            length = len(data)
        self.send(struct.pack(">QII", magic, opt, length) + data)

    def recv_option_reply(self, opt):
        magic, ropt, rtype, length = struct.unpack(">QIII", self.recv_exact(20))
        check(magic == OPT_REPLY_MAGIC, "bad option reply magic 0x%x" % magic)
        check(ropt == opt, "option reply for option %d, expected %d" % (ropt, opt))
        check(length <= 1 << 20, "option reply of %d bytes" % length)
        return rtype, self.recv_exact(length)

    def go(self, name="", structured=False, meta=False):
        """Negotiate with OPT_GO; returns the final reply type."""
        if structured:
            self.send_option(OPT_STRUCTURED_REPLY)
            rtype, _ = self.recv_option_reply(OPT_STRUCTURED_REPLY)
            check(rtype == REP_ACK, "STRUCTURED_REPLY: reply type 0x%x" % rtype)
            self.structured = True
        if meta:
            nm = name.encode()
            ctx = b"base:allocation"
            data = (struct.pack(">I", len(nm)) + nm + struct.pack(">I", 1)
                    + struct.pack(">I", len(ctx)) + ctx)
            self.send_option(OPT_SET_META_CONTEXT, data)
            while True:
                rtype, payload = self.recv_option_reply(OPT_SET_META_CONTEXT)
                if rtype == REP_ACK:
                    break
                check(rtype == REP_META_CONTEXT,
                      "SET_META_CONTEXT: reply type 0x%x" % rtype)
        nm = name.encode()
        data = struct.pack(">I", len(nm)) + nm + struct.pack(">HH", 1, INFO_BLOCK_SIZE)
        self.send_option(OPT_GO, data)
        while True:
            rtype, payload = self.recv_option_reply(OPT_GO)
            if rtype == REP_INFO:
                (itype,) = struct.unpack(">H", payload[:2])
                if itype == INFO_EXPORT:
                    self.size, self.tflags = struct.unpack(">QH", payload[2:12])
                continue
            if rtype == REP_ACK:
                check(self.size is not None, "OPT_GO acked without NBD_INFO_EXPORT")
            return rtype

    # --- transmission ---------------------------------------------------

    def request(self, cmd, offset, length, flags=0, data=b"", magic=REQUEST_MAGIC,
                handle=None):
        if handle is None:
            handle = self.next_handle
            self.next_handle += 1
        self.send(struct.pack(">IHHQQI", magic, flags, cmd, handle, offset, length) + data)
        return handle

    def reply(self):
        """Reads one whole reply.  Returns (handle, error, data).  For a
        structured reply, chunks are gathered until the DONE flag; data is
        a dict offset -> bytes for reads, or the raw payloads otherwise."""
        (magic,) = struct.unpack(">I", self.recv_exact(4))
        if magic == SIMPLE_REPLY_MAGIC:
            error, handle = struct.unpack(">IQ", self.recv_exact(12))
            return handle, error, None
        check(magic == STRUCTURED_REPLY_MAGIC, "bad reply magic 0x%x" % magic)
        check(self.structured, "structured reply without negotiation")
        error = 0
        chunks = []
        handle = None
        while True:
            flags, rtype, h, length = struct.unpack(">HHQI", self.recv_exact(16))
            check(handle is None or h == handle, "interleaved chunks not handled here")
            handle = h
            check(length <= 1 << 28, "chunk of %d bytes" % length)
            payload = self.recv_exact(length)
            if rtype & (1 << 15):
                (err,) = struct.unpack(">I", payload[:4])
                check(err != 0, "error chunk with error 0")
                error = error or err
            else:
                chunks.append((rtype, payload))
            if flags & REPLY_FLAG_DONE:
                return handle, error, chunks
            (magic,) = struct.unpack(">I", self.recv_exact(4))
            check(magic == STRUCTURED_REPLY_MAGIC, "bad reply magic 0x%x" % magic)

    def read(self, offset, length, flags=0):
        """Returns (error, data).  data is None on error."""
        h = self.request(CMD_READ, offset, length, flags)
        return self.read_reply(h, offset, length)

    def read_reply(self, h, offset, length):
        if not self.structured:
            rh, error, _ = self.reply()
            check(rh == h, "reply for handle %d, expected %d" % (rh, h))
            if error:
                return error, None
            return 0, self.recv_exact(length)
        rh, error, chunks = self.reply()
        check(rh == h, "reply for handle %d, expected %d" % (rh, h))
        if error:
            return error, None
        buf = bytearray(length)
        seen = 0
        for rtype, payload in chunks:
            if rtype == REPLY_TYPE_OFFSET_DATA:
                (off,) = struct.unpack(">Q", payload[:8])
                d = payload[8:]
                check(offset <= off and off + len(d) <= offset + length,
                      "data chunk outside the request")
                buf[off - offset:off - offset + len(d)] = d
                seen += len(d)
            elif rtype == REPLY_TYPE_OFFSET_HOLE:
                off, hl = struct.unpack(">QI", payload[:12])
                check(offset <= off and off + hl <= offset + length,
                      "hole chunk outside the request")
                seen += hl
            else:
                check(rtype == REPLY_TYPE_NONE, "unexpected chunk type %d in read" % rtype)
        check(seen == length, "read reply covers %d of %d bytes" % (seen, length))
        return 0, bytes(buf)

    def simple_cmd(self, cmd, offset, length, flags=0, data=b""):
        """Sends one request without a read payload; returns its error."""
        h = self.request(cmd, offset, length, flags, data)
        rh, error, _ = self.reply()
        check(rh == h, "reply for handle %d, expected %d" % (rh, h))
        return error

    def write(self, offset, data, flags=0):
        return self.simple_cmd(CMD_WRITE, offset, len(data), flags, data)

    def disc(self):
        self.request(CMD_DISC, 0, 0)


def connect(path, name="", structured=False, meta=False):
    c = Conn(path)
    c.greeting()
    c.send_client_flags(FLAG_FIXED_NEWSTYLE)
    rtype = c.go(name, structured, meta)
    check(rtype == REP_ACK, "OPT_GO(%r) failed with reply type 0x%x" % (name, rtype))
    return c


def pattern(seed, n):
    """Deterministic, non-repeating-looking bytes."""
    out = bytearray()
    x = seed & 0xFFFFFFFF or 1
    while len(out) < n:
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out += struct.pack(">I", x)
    return bytes(out[:n])


def expect_err(got, allowed, what):
    check(got in allowed, "%s: error %d, expected one of %s" % (what, got, sorted(allowed)))


def still_works(c, what, offset=8192):
    """The same connection still serves a write and a read."""
    data = pattern(offset ^ 0x5EED, 4096)
    err = c.write(offset, data)
    check(err == 0, "%s: later write on the same connection failed: %d" % (what, err))
    err, got = c.read(offset, 4096)
    check(err == 0 and got == data, "%s: later read on the same connection is wrong" % what)


# --- cases ---------------------------------------------------------------
# Each case gets the socket path and the parsed arguments.  A case returns
# normally when the server behaved as expected.

def case_fresh(path, a):
    """A well-behaved client: write, read back, flush, in both reply modes."""
    seed = int(time.time() * 1000) & 0xFFFFFF
    for structured in (False, True):
        c = connect(path, a.export, structured)
        check(c.size == a.size, "export size %d, expected %d" % (c.size, a.size))
        off = 1048576 + (seed % 64) * 4096 + 513
        data = pattern(seed + structured, 70000)
        check(c.write(off, data) == 0, "write failed")
        err, got = c.read(off, len(data))
        check(err == 0, "read failed: %d" % err)
        check(got == data, "read back different data (structured=%s)" % structured)
        check(c.simple_cmd(CMD_FLUSH, 0, 0) == 0, "flush failed")
        c.disc()
        c.expect_eof("after NBD_CMD_DISC")
        c.close()


def block_status(c, offset, length, flags=0):
    """Returns the list of (length, flags) extents for base:allocation."""
    h = c.request(CMD_BLOCK_STATUS, offset, length, flags)
    rh, err, chunks = c.reply()
    check(rh == h, "reply for handle %d, expected %d" % (rh, h))
    check(err == 0, "BLOCK_STATUS failed: %d" % err)
    extents = []
    for rtype, payload in chunks:
        check(rtype == REPLY_TYPE_BLOCK_STATUS, "unexpected chunk type %d" % rtype)
        for i in range(4, len(payload), 8):
            extents.append(struct.unpack(">II", payload[i:i + 8]))
    check(extents, "BLOCK_STATUS returned no extent")
    return extents


def case_commands(path, a):
    """Well-formed use of every command: FUA writes, WRITE_ZEROES (plain,
    NO_HOLE, FAST_ZERO), TRIM, CACHE, BLOCK_STATUS (with REQ_ONE), DF
    reads, and visibility on a second connection after FLUSH."""
    c = connect(path, a.export, structured=True, meta=True)
    for flag in (TF_HAS_FLAGS, 1 << 2, 1 << 3, 1 << 5, 1 << 6, 1 << 7, 1 << 8, 1 << 10, 1 << 11):
        check(c.tflags & flag, "transmission flag 0x%x missing (flags 0x%x)" % (flag, c.tflags))
    base = 4 << 20
    data = pattern(77, 256 * 1024)
    check(c.write(base, data, CMD_FLAG_FUA) == 0, "FUA write failed")
    # Another connection sees a FUA write at once (CAN_MULTI_CONN).
    d = connect(path, a.export)
    err, got = d.read(base, len(data))
    check(err == 0 and got == data, "second connection does not see a FUA write")
    # WRITE_ZEROES: plain, NO_HOLE, and FAST_ZERO (which may fail fast with
    # ENOTSUP, and then must not change anything).
    check(c.simple_cmd(CMD_WRITE_ZEROES, base + 1000, 5000) == 0, "WRITE_ZEROES failed")
    check(c.simple_cmd(CMD_WRITE_ZEROES, base + 70000, 4096, CMD_FLAG_NO_HOLE) == 0,
          "WRITE_ZEROES with NO_HOLE failed")
    fz = c.simple_cmd(CMD_WRITE_ZEROES, base + 131072, 65536, CMD_FLAG_FAST_ZERO)
    expect_err(fz, {0, ENOTSUP}, "WRITE_ZEROES with FAST_ZERO")
    expect = bytearray(data)
    expect[1000:6000] = bytes(5000)
    expect[70000:74096] = bytes(4096)
    if fz == 0:
        expect[131072:196608] = bytes(65536)
    check(c.simple_cmd(CMD_FLUSH, 0, 0) == 0, "FLUSH failed")
    err, got = d.read(base, len(data))
    check(err == 0 and got == bytes(expect),
          "after WRITE_ZEROES and FLUSH, a second connection reads wrong data")
    # TRIM: succeeds; the trimmed range reads as the old data or zeroes.
    check(c.simple_cmd(CMD_TRIM, base + 196608, 65536) == 0, "TRIM failed")
    err, got = c.read(base + 196608, 65536)
    check(err == 0 and got in (bytes(expect[196608:]), bytes(65536)),
          "trimmed range reads neither the old data nor zeroes")
    # CACHE: a hint; succeeds and changes nothing.
    check(c.simple_cmd(CMD_CACHE, base, 65536) == 0, "CACHE failed")
    err, got = c.read(base, 65536)
    check(err == 0 and got == bytes(expect[:65536]), "CACHE changed data")
    # DF read: a single data chunk (or error), never fragmented.
    h = c.request(CMD_READ, base, 65536, CMD_FLAG_DF)
    rh, err, chunks = c.reply()
    check(rh == h and err == 0, "DF read failed: %d" % err)
    check(len(chunks) == 1 and chunks[0][0] == REPLY_TYPE_OFFSET_DATA,
          "DF read was fragmented into %r" % [(t, len(p)) for t, p in chunks])
    check(chunks[0][1][8:] == bytes(expect[:65536]), "DF read returned wrong data")
    # BLOCK_STATUS: extents cover the request, in order; a range zeroed
    # with NO_HOLE is not a hole; REQ_ONE gives one extent.
    ext = block_status(c, 0, a.size)
    total = sum(ln for ln, _ in ext)
    check(0 < total <= a.size, "BLOCK_STATUS covers %d bytes of %d" % (total, a.size))
    check(all(ln > 0 for ln, _ in ext), "BLOCK_STATUS has an empty extent")
    ext = block_status(c, base + 1, 1000, CMD_FLAG_REQ_ONE)
    check(len(ext) == 1 and 0 < ext[0][0] <= 1000,
          "BLOCK_STATUS with REQ_ONE: %r" % ext)
    check(not ext[0][1] & 3, "range holding data reported as hole/zero: %r" % ext)
    ext = block_status(c, a.size - 4096, 4096)
    check(sum(ln for ln, _ in ext) <= 4096, "BLOCK_STATUS past the request: %r" % ext)
    h = c.request(CMD_BLOCK_STATUS, a.size, 4096)
    rh, err, _ = c.reply()
    expect_err(err, {EINVAL}, "BLOCK_STATUS beyond the end")
    c.disc()
    d.disc()


def case_bad_client_flags(path, a):
    c = Conn(path)
    c.greeting()
    c.send_client_flags(FLAG_FIXED_NEWSTYLE | 0x80000000 | 0x100)
    # The server must drop us; it may not even read further.
    try:
        c.send_option(OPT_GO, struct.pack(">IH", 0, 0))
    except Closed:
        return
    c.expect_eof("unknown client flags")


def case_bad_option_magic(path, a):
    c = Conn(path)
    c.greeting()
    c.send_client_flags(FLAG_FIXED_NEWSTYLE)
    try:
        c.send_option(OPT_GO, struct.pack(">IH", 0, 0), magic=0x1122334455667788)
    except Closed:
        return
    c.expect_eof("bad option magic")


def case_oversize_option(path, a):
    """NBD_OPT_GO with 1 MiB of data (export names are at most 4096
    bytes): an error reply, after which the connection is still usable,
    or a disconnect."""
    c = Conn(path)
    c.greeting()
    c.send_client_flags(FLAG_FIXED_NEWSTYLE)
    big = 1 << 20
    data = struct.pack(">I", big - 6) + b"n" * (big - 6) + struct.pack(">H", 0)
    try:
        c.send_option(OPT_GO, data)
        rtype, _ = c.recv_option_reply(OPT_GO)
    except Closed:
        return
    check(rtype & REP_ERR, "oversize option: reply type 0x%x, expected an error" % rtype)
    rtype = c.go(a.export)
    check(rtype == REP_ACK, "OPT_GO after an oversize option failed: 0x%x" % rtype)
    still_works(c, "after an oversize option")


def case_oversize_option_claim(path, a):
    """An option header claiming 2 GiB of data, then 1 MiB of it and a
    dropped connection: the server must not allocate the claimed size
    or fall over (checked by the next client)."""
    c = Conn(path)
    c.greeting()
    c.send_client_flags(FLAG_FIXED_NEWSTYLE)
    try:
        c.send_option(OPT_GO, b"\0" * (1 << 20), length=0x7FFFFFF0)
    except Closed:
        return
    c.close()


def case_oversize_option_list(path, a):
    """NBD_OPT_LIST with a 64 KiB payload (it takes none): an error reply
    (NBD_REP_ERR_INVALID) and the payload skipped, or a disconnect."""
    c = Conn(path)
    c.greeting()
    c.send_client_flags(FLAG_FIXED_NEWSTYLE)
    try:
        c.send_option(OPT_LIST, b"\xee" * 65536)
        rtype, _ = c.recv_option_reply(OPT_LIST)
    except Closed:
        return
    check(rtype & REP_ERR, "OPT_LIST with data: reply type 0x%x, expected an error" % rtype)
    # The connection stays usable.
    rtype = c.go(a.export)
    check(rtype == REP_ACK, "OPT_GO after a rejected option failed: 0x%x" % rtype)
    still_works(c, "after OPT_LIST with data")


def case_unknown_option(path, a):
    c = Conn(path)
    c.greeting()
    c.send_client_flags(FLAG_FIXED_NEWSTYLE)
    c.send_option(0x7EADBEEF, b"hello")
    rtype, _ = c.recv_option_reply(0x7EADBEEF)
    check(rtype == REP_ERR_UNSUP, "unknown option: reply type 0x%x, expected ERR_UNSUP" % rtype)
    # Negotiation continues on the same connection.
    c.send_option(OPT_LIST)
    names = []
    while True:
        rtype, payload = c.recv_option_reply(OPT_LIST)
        if rtype == REP_ACK:
            break
        check(rtype == REP_SERVER, "OPT_LIST: reply type 0x%x" % rtype)
        (n,) = struct.unpack(">I", payload[:4])
        names.append(payload[4:4 + n].decode())
    check(names, "OPT_LIST returned no export")
    rtype = c.go(a.export)
    check(rtype == REP_ACK, "OPT_GO after an unknown option failed: 0x%x" % rtype)
    still_works(c, "after an unknown option")


def case_go_unknown_export(path, a):
    c = Conn(path)
    c.greeting()
    c.send_client_flags(FLAG_FIXED_NEWSTYLE)
    rtype = c.go("no-such-export-" + str(os.getpid()))
    check(rtype == REP_ERR_UNKNOWN,
          "OPT_GO for a nonexistent export: reply type 0x%x, expected ERR_UNKNOWN" % rtype)
    # The client may try again on the same connection.
    c.size = None
    rtype = c.go(a.export)
    check(rtype == REP_ACK, "OPT_GO after ERR_UNKNOWN failed: 0x%x" % rtype)
    still_works(c, "after OPT_GO for a nonexistent export")


def case_abort(path, a):
    c = Conn(path)
    c.greeting()
    c.send_client_flags(FLAG_FIXED_NEWSTYLE)
    c.send_option(OPT_ABORT)
    try:
        rtype, _ = c.recv_option_reply(OPT_ABORT)
        check(rtype == REP_ACK, "OPT_ABORT: reply type 0x%x, expected ACK" % rtype)
    except Closed:
        pass  # allowed by the spec for older servers
    c.expect_eof("after OPT_ABORT")


def case_export_name(path, a):
    """Old-style entry into transmission with NBD_OPT_EXPORT_NAME."""
    c = Conn(path)
    hflags = c.greeting()
    cflags = FLAG_FIXED_NEWSTYLE | (hflags & FLAG_NO_ZEROES)
    c.send_client_flags(cflags)
    name = a.export.encode()
    c.send_option(OPT_EXPORT_NAME, name)
    c.size, c.tflags = struct.unpack(">QH", c.recv_exact(10))
    if not cflags & FLAG_NO_ZEROES:
        check(c.recv_exact(124) == b"\0" * 124, "reserved bytes not zero")
    check(c.size == a.size, "EXPORT_NAME: size %d, expected %d" % (c.size, a.size))
    check(c.tflags & TF_HAS_FLAGS, "transmission flags without HAS_FLAGS")
    still_works(c, "after NBD_OPT_EXPORT_NAME")


def case_bad_request_magic(path, a):
    c = connect(path, a.export)
    c.request(CMD_READ, 0, 512, magic=0xDEADBEEF)
    c.expect_eof("bad request magic")


def case_read_out_of_range(path, a):
    for structured in (False, True):
        c = connect(path, a.export, structured)
        for off, ln in ((a.size, 4096), (a.size - 512, 4096), (a.size + (1 << 40), 512),
                        ((1 << 64) - 512, 1024)):
            err, _ = c.read(off, ln)
            expect_err(err, {EINVAL}, "read of %d bytes at %d (size %d)" % (ln, off, a.size))
        # The last bytes are readable.
        err, _ = c.read(a.size - 512, 512)
        check(err == 0, "read of the last 512 bytes failed: %d" % err)
        still_works(c, "after out-of-range reads")


def case_write_out_of_range(path, a):
    c = connect(path, a.export)
    tail = a.size - 512
    err, before = c.read(tail, 512)
    check(err == 0, "read of the last sector failed")
    # The payload is sent in full, so the server must consume it and stay in
    # step with the stream.
    for off, ln in ((tail, 4096), (a.size, 512), (a.size + 4096, 4096), ((1 << 64) - 512, 1024)):
        err = c.write(off, b"\xab" * ln)
        expect_err(err, {ENOSPC, EINVAL}, "write of %d bytes at %d (size %d)" % (ln, off, a.size))
    for cmd in (CMD_TRIM, CMD_WRITE_ZEROES):
        err = c.simple_cmd(cmd, tail, 4096)
        expect_err(err, {ENOSPC, EINVAL}, "command %d of 4096 bytes at %d" % (cmd, tail))
    err, after = c.read(tail, 512)
    check(err == 0 and after == before, "a rejected out-of-range request changed the data")
    still_works(c, "after out-of-range writes")


def case_read_oversize(path, a):
    for structured in (False, True):
        c = connect(path, a.export, structured)
        for ln in (MAX_PAYLOAD + 1, 64 << 20, 0xFFFFFFFF):
            try:
                err, _ = c.read(0, ln)
            except Closed:
                raise Failure("read of %d bytes: server dropped the connection, "
                              "expected EINVAL" % ln)
            # The spec lets a server serve reads above the maximum it
            # advertised if it can.
            if a.strict or ln > a.size:
                expect_err(err, {EINVAL}, "read of %d bytes" % ln)
        # The maximum is accepted.
        err, data = c.read(0, min(MAX_PAYLOAD, a.size))
        check(err == 0 and len(data) == min(MAX_PAYLOAD, a.size),
              "read of the maximum payload failed: %d" % err)
        still_works(c, "after oversize reads")


def case_write_oversize(path, a):
    """A write header announcing more than the maximum payload, with no
    payload sent: the server must answer EINVAL or disconnect, without
    waiting for the payload.  (Servers other than rbdcache may accept up
    to 64 MiB, so without --strict only a 4 GiB write is tried.)"""
    lengths = [0xFFFFFFF0]
    if a.strict:
        lengths = [MAX_PAYLOAD + 1, 64 << 20] + lengths
    for ln in lengths:
        c = connect(path, a.export)
        h = c.request(CMD_WRITE, 0, ln)
        c.sock.settimeout(EOF_TIMEOUT)
        try:
            rh, err, _ = c.reply()
        except Closed:
            c.close()
            continue
        except Failure as e:
            raise Failure("write of %d bytes without payload: %s" % (ln, e))
        check(rh == h, "oversize write: reply for handle %d" % rh)
        expect_err(err, {EINVAL, EOVERFLOW}, "write of %d bytes" % ln)
        c.close()


def case_unknown_command(path, a):
    c = connect(path, a.export)
    for cmd in (99, 0x7FFF, 0xFFFF):
        err = c.simple_cmd(cmd, 0, 512)
        expect_err(err, {EINVAL}, "unknown command %d" % cmd)
    # BLOCK_STATUS without a negotiated meta context: EINVAL.
    err = c.simple_cmd(CMD_BLOCK_STATUS, 0, 4096)
    expect_err(err, {EINVAL}, "BLOCK_STATUS without SET_META_CONTEXT")
    still_works(c, "after unknown commands")


def case_unknown_flags(path, a):
    c = connect(path, a.export)
    for flag in (1 << 15, 1 << 10, 1 << 5):
        err, _ = c.read(0, 512, flags=flag)
        expect_err(err, {EINVAL}, "read with unknown flag 0x%x" % flag)
        err = c.simple_cmd(CMD_FLUSH, 0, 0, flags=flag)
        expect_err(err, {EINVAL}, "flush with unknown flag 0x%x" % flag)
    # A write with unknown flags: its payload must still be consumed.
    err = c.write(16384, b"\x77" * 4096, flags=1 << 14)
    expect_err(err, {EINVAL}, "write with unknown flag 0x4000")
    # DF without structured replies is invalid.
    err, _ = c.read(0, 512, flags=CMD_FLAG_DF)
    expect_err(err, {EINVAL}, "read with DF and no structured replies")
    still_works(c, "after requests with unknown flags")


def case_half_header(path, a):
    c = connect(path, a.export)
    c.send(struct.pack(">IHHQ", REQUEST_MAGIC, 0, CMD_READ, 7)[:14])
    time.sleep(0.2)
    c.close()


def case_half_write_payload(path, a):
    c = connect(path, a.export)
    c.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, 9, 65536, 65536))
    c.send(b"\xcd" * 32768)
    time.sleep(0.2)
    c.close()


def case_half_write_payload_reset(path, a):
    """Like half_write_payload, but the client resets the connection with
    requests in flight (SO_LINGER 0), so the server's writes may fail."""
    c = connect(path, a.export)
    for i in range(8):
        c.request(CMD_READ, i * 65536, 65536)
    c.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, 99, 0, 1 << 20))
    c.send(b"\xcd" * 4096)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


def case_disc_with_outstanding(path, a):
    """Requests queued, then NBD_CMD_DISC, without reading any reply: the
    server handles them and closes.  A write answered with success is
    there afterwards.  With --strict, every request must be answered
    with success (the server finishes all outstanding requests, replies,
    then closes), and every write is there."""
    c = connect(path, a.export)
    base = 2 << 20
    n = 16
    writes = {}
    for i in range(n):
        data = pattern(0xD15C + i + int(time.time()), 65536)
        writes[c.request(CMD_WRITE, base + i * 65536, 65536, data=data)] = (i, data)
    reads = [c.request(CMD_READ, base + i * 65536, 4096) for i in range(4)]
    flush = c.request(CMD_FLUSH, 0, 0)
    c.disc()
    replies = {}
    try:
        while True:
            rh, err, _ = c.reply()
            check(rh in writes or rh in reads or rh == flush, "reply for unknown handle %d" % rh)
            check(rh not in replies, "two replies for handle %d" % rh)
            replies[rh] = err
            if rh in reads and err == 0:
                c.recv_exact(4096)
    except Closed:
        pass
    c.close()
    for h, err in replies.items():
        check(err in (0, ESHUTDOWN), "request %d before NBD_CMD_DISC failed: %d" % (h, err))
    if a.strict:
        missing = [h for h in list(writes) + reads + [flush] if replies.get(h) != 0]
        check(not missing, "requests %s sent before NBD_CMD_DISC were not answered with "
              "success (replies: %r)" % (missing, replies))
    c = connect(path, a.export)
    for h, (i, data) in writes.items():
        if replies.get(h) != 0:
            continue
        err, got = c.read(base + i * 65536, 65536)
        check(err == 0 and got == data,
              "write %d, answered before the server closed, is not there" % i)


def case_read_only(path, a):
    """Against a --read-only export: flag set, writes fail (with EPERM
    under --strict)."""
    c = connect(path, a.export)
    check(c.tflags & TF_READ_ONLY, "NBD_FLAG_READ_ONLY not set")
    err, before = c.read(0, 4096)
    check(err == 0, "read failed on a read-only export")
    allowed = {EPERM} if a.strict else {EPERM, EINVAL, EIO}
    expect_err(c.write(0, b"\x42" * 4096), allowed, "write to a read-only export")
    expect_err(c.simple_cmd(CMD_WRITE_ZEROES, 0, 4096), allowed,
               "WRITE_ZEROES to a read-only export")
    expect_err(c.simple_cmd(CMD_TRIM, 0, 4096), allowed, "TRIM to a read-only export")
    err, after = c.read(0, 4096)
    check(err == 0 and after == before, "a rejected write changed a read-only export")
    check(c.simple_cmd(CMD_FLUSH, 0, 0) in (0, EPERM), "flush on a read-only export failed")



# --- load and verification tools (not malformed-input cases) -------------

SLOT = 16384


def slot_data(slot, version):
    """The contents of version VERSION of slot SLOT; version 0 is zeroes."""
    if version == 0:
        return b"\0" * SLOT
    return struct.pack(">QQ", slot, version) * (SLOT // 16)


def tool_load(path, a):
    """Writes 16 KiB slots in --region (OFFSET:LENGTH) with 16 requests in
    flight, a flush every 64 writes and FUA on every 16th write, until the
    server closes the connection or --duration passes.  Never two writes
    in flight to one slot.  Touches --ready once 200 writes are answered.
    Replies must succeed (or fail with ESHUTDOWN while the server shuts
    down).  Writes a JSON log for verify_log: per slot, the number of
    versions sent, the last version answered with success, and the last
    version known durable (FUA, or answered before a successful flush was
    sent)."""
    import json
    import random
    roff, rlen = (int(x, 0) for x in a.region.split(":"))
    nslots = rlen // SLOT
    sent = [0] * nslots
    acked = [0] * nslots
    durable = [0] * nslots
    busy = set()
    inflight = {}  # handle -> ("w", slot, version, fua) | ("f", snapshot)
    flush_pending = False
    rnd = random.Random(a.seed)
    c = connect(path, a.export)
    deadline = time.monotonic() + a.duration
    nacked = 0
    nwrites = 0
    closed_by = "duration"
    try:
        while time.monotonic() < deadline:
            while len(inflight) < 16:
                if nwrites % 64 == 63 and not flush_pending:
                    h = c.request(CMD_FLUSH, 0, 0)
                    inflight[h] = ("f", list(acked))
                    flush_pending = True
                slot = rnd.randrange(nslots)
                if slot in busy:
                    continue
                sent[slot] += 1
                fua = nwrites % 16 == 15
                h = c.request(CMD_WRITE, roff + slot * SLOT, SLOT,
                              CMD_FLAG_FUA if fua else 0, slot_data(slot, sent[slot]))
                inflight[h] = ("w", slot, sent[slot], fua)
                busy.add(slot)
                nwrites += 1
            rh, err, _ = c.reply()
            check(rh in inflight, "reply for unknown handle %d" % rh)
            req = inflight.pop(rh)
            check(err in (0, ESHUTDOWN), "request %r failed with error %d" % (req[:3], err))
            if req[0] == "f":
                flush_pending = False
                if err == 0:
                    durable[:] = [max(d, s) for d, s in zip(durable, req[1])]
                continue
            _, slot, version, fua = req
            busy.discard(slot)
            if err == 0:
                acked[slot] = version
                if fua:
                    durable[slot] = max(durable[slot], version)
                nacked += 1
                if nacked == 200 and a.ready:
                    open(a.ready, "w").close()
        c.disc()
    except Closed:
        closed_by = "server"
    with open(a.log, "w") as f:
        json.dump({"region": [roff, rlen], "sent": sent, "acked": acked,
                   "durable": durable}, f)
    print("load: %d writes sent, %d answered, ended by %s"
          % (nwrites, nacked, closed_by), file=sys.stderr)
    check(nacked >= 200 or not a.ready, "only %d writes answered" % nacked)


def tool_verify_log(path, a):
    """Checks a tool_load log.  With --origin-file, reads the file itself
    and checks durable writes: each slot holds its last durable version or
    a later one.  Otherwise reads through the server and checks answered
    writes: each slot holds its last answered version or a later one."""
    import json
    log = json.load(open(a.log))
    roff, rlen = log["region"]
    if a.origin_file:
        f = open(a.origin_file, "rb")
        def read(off):
            f.seek(off)
            return f.read(SLOT)
        floor = log["durable"]
    else:
        c = connect(path, a.export)
        def read(off):
            err, data = c.read(off, SLOT)
            check(err == 0, "read at %d failed: %d" % (off, err))
            return data
        floor = log["acked"]
    bad = []
    for slot, (lo, hi) in enumerate(zip(floor, log["sent"])):
        if hi == 0:
            continue
        got = read(roff + slot * SLOT)
        if not any(got == slot_data(slot, v) for v in range(lo, hi + 1)):
            bad.append((slot, lo, hi, got[:16].hex()))
    check(not bad, "%d slots lost data; first (slot, min version, max version, head): %r"
          % (len(bad), bad[:5]))


def tool_idle(path, a):
    """Connects, negotiates, then waits for the server to close."""
    c = connect(path, a.export)
    if a.ready:
        open(a.ready, "w").close()
    c.sock.settimeout(a.duration)
    try:
        c.recv_exact(1)
    except Closed:
        return
    raise Failure("idle client got data or no disconnect")


TOOLS = {"load": tool_load, "verify_log": tool_verify_log, "idle": tool_idle}

CASES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}
CASES.update(TOOLS)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("socket", nargs="?")
    p.add_argument("case", nargs="?")
    p.add_argument("--size", type=int, default=None,
                   help="expected export size (default: as negotiated)")
    p.add_argument("--export", default="", help="export name to use")
    p.add_argument("--strict", action="store_true",
                   help="also check choices rbdcache documents where the NBD spec "
                   "leaves room: every request sent before NBD_CMD_DISC succeeds, "
                   "reads above the maximum payload fail with EINVAL, writes to a "
                   "read-only export fail with EPERM")
    p.add_argument("--list-cases", action="store_true")
    p.add_argument("--region", default="0:16777216", help="load: OFFSET:LENGTH")
    p.add_argument("--seed", type=int, default=1, help="load: random seed")
    p.add_argument("--duration", type=float, default=120.0,
                   help="load, idle: give up after this many seconds")
    p.add_argument("--ready", help="load, idle: touch this file when under way")
    p.add_argument("--log", help="load, verify_log: the log file")
    p.add_argument("--origin-file", help="verify_log: check this file for durable writes")
    a = p.parse_args()
    if a.list_cases:
        print("\n".join(CASES))
        return 0
    if not a.socket or a.case not in CASES:
        p.error("need SOCKET and one of: " + ", ".join(CASES))
    try:
        if a.size is None and a.case not in TOOLS:
            c = connect(a.socket, a.export)
            a.size = c.size
            c.close()
        CASES[a.case](a.socket, a)
    except (Failure, Closed, OSError) as e:
        print("nbd_raw_client: %s: FAIL: %s: %s" % (a.case, type(e).__name__, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
