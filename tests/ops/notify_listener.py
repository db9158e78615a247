#!/usr/bin/env python3
"""Stands in for systemd's notification socket (sd_notify(3)) in tests.

Binds a unix datagram socket at PATH and appends one JSON line per datagram
to LOG: the sender's pid (from SCM_CREDENTIALS, as systemd checks it), the
raw message, and its KEY=VALUE assignments. On a datagram holding READY=1 it
checks at once, before reading anything else, what the service promised to
be ready:

  --nbd-socket S   a connection to S gets the NBD greeting (NBDMAGIC,
                   IHAVEOPT) and `nbdinfo --json nbd+unix:///?socket=S`
                   succeeds; the size it reports is recorded;
  --control S      a connection to the unix socket S is accepted.

The results go into the READY line under "checks". Creates PATH.listening
once bound. Runs until killed.
"""
import argparse
import json
import os
import socket
import struct
import subprocess
import time


def nbd_greeting(path):
    """Connects to the NBD socket; returns None if the greeting came, else why not."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(path)
        data = b""
        while len(data) < 18:
            chunk = s.recv(18 - len(data))
            if not chunk:
                return "connection closed after %d bytes" % len(data)
            data += chunk
        if data[:8] != b"NBDMAGIC" or data[8:16] != b"IHAVEOPT":
            return "unexpected greeting %r" % data
        # NBD_OPT_ABORT, so the server sees a polite client.
        s.sendall(struct.pack(">I", 0) + b"IHAVEOPT" + struct.pack(">II", 2, 0))
        return None
    except OSError as e:
        return "%s: %s" % (path, e)
    finally:
        s.close()


def nbdinfo(path):
    """Runs nbdinfo --json; returns (error or None, size or None)."""
    uri = "nbd+unix:///?socket=" + path
    try:
        p = subprocess.run(["nbdinfo", "--json", uri], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "nbdinfo: %s" % e, None
    if p.returncode != 0:
        return "nbdinfo exit %d: %s" % (p.returncode, p.stderr.strip()), None
    try:
        doc = json.loads(p.stdout)
        return None, doc["exports"][0]["export-size"]
    except (ValueError, KeyError, IndexError) as e:
        return "nbdinfo output: %s" % e, None


def can_connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(path)
        return None
    except OSError as e:
        return "%s: %s" % (path, e)
    finally:
        s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("log")
    ap.add_argument("--nbd-socket")
    ap.add_argument("--control")
    args = ap.parse_args()

    if os.path.exists(args.path):
        os.unlink(args.path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(args.path)
    open(args.path + ".listening", "w").close()

    seq = 0
    ucred = struct.calcsize("3i")
    with open(args.log, "a", buffering=1) as log:
        while True:
            msg, ancdata, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(ucred))
            pid = None
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", data[:ucred])[0]
            text = msg.decode("utf-8", "replace")
            fields = {}
            for line in text.split("\n"):
                if "=" in line:
                    k, v = line.split("=", 1)
                    fields[k] = v
            seq += 1
            rec = {"seq": seq, "time": time.monotonic(), "pid": pid, "raw": text, "fields": fields}
            if fields.get("READY") == "1":
                checks = {}
                if args.nbd_socket:
                    checks["greeting"] = nbd_greeting(args.nbd_socket)
                    checks["nbdinfo"], checks["size"] = nbdinfo(args.nbd_socket)
                if args.control:
                    checks["control"] = can_connect(args.control)
                rec["checks"] = checks
            log.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
