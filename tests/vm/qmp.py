#!/usr/bin/env python3
"""A minimal QMP client for the VM tests (QEMU's JSON machine protocol).

    qmp.py SOCKET COMMAND [JSON-ARGUMENTS]
        runs one command, prints its "return" value as JSON; exit 1 on an
        error reply
    qmp.py SOCKET migrate URI [TIMEOUT]
        starts a migration and polls query-migrate until it has completed
        (prints the final query-migrate reply) or failed, or TIMEOUT seconds
        (default 60) have passed (exit 1)
"""
import json
import socket
import sys
import time


class Qmp:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.file = self.sock.makefile("rw")
        self._reply()  # the greeting
        self.execute("qmp_capabilities")

    def _reply(self):
        while True:
            line = self.file.readline()
            if not line:
                raise RuntimeError("QMP connection closed")
            msg = json.loads(line)
            if "event" not in msg:  # events are not replies
                return msg

    def execute(self, command, arguments=None):
        req = {"execute": command}
        if arguments:
            req["arguments"] = arguments
        self.file.write(json.dumps(req) + "\n")
        self.file.flush()
        msg = self._reply()
        if "error" in msg:
            raise RuntimeError("%s: %s" % (command, msg["error"].get("desc", msg["error"])))
        return msg.get("return")


def migrate(q, uri, timeout):
    q.execute("migrate", {"uri": uri})
    deadline = time.monotonic() + timeout
    while True:
        info = q.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            raise RuntimeError("migration %s: %s" % (status, info.get("error-desc", info)))
        if time.monotonic() > deadline:
            raise RuntimeError("migration not completed after %ss: %s" % (timeout, info))
        time.sleep(0.1)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    try:
        q = Qmp(sys.argv[1])
        if sys.argv[2] == "migrate":
            timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 60.0
            out = migrate(q, sys.argv[3], timeout)
        else:
            args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
            out = q.execute(sys.argv[2], args)
    except (OSError, RuntimeError, ValueError) as e:
        sys.exit("qmp.py: %s" % e)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
