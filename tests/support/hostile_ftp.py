"""A hostile FTPS server for the security tests (pyftpdlib, from Debian).

It serves FOLDER to one user over explicit TLS, as a district's server
would, except that its LIST answer also names files whose names are paths:
the names in HOSTILE_NAMES (one per line), each listed with a small size
beside the real files. Every command it receives is appended to LOG, so a
test can show which names the client asked for.

usage: hostile_ftp.py PORT FOLDER CERT KEY USER PASSWORD HOSTILE_NAMES LOG
"""

import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import TLS_FTPHandler
from pyftpdlib.servers import FTPServer

port, folder, cert, key, user, password, names_file, log = sys.argv[1:9]
with open(names_file, encoding="utf-8") as f:
    hostile = [line.rstrip("\n") for line in f if line.rstrip("\n")]


def listed(name, size):
    return f"-rw-r--r--   1 sis      sis      {size:>8} Jan 01  2026 {name}\r\n"


class Hostile(TLS_FTPHandler):
    certfile = cert
    keyfile = key
    tls_control_required = True
    tls_data_required = True
    permit_foreign_addresses = False

    def pre_process_command(self, line, cmd, arg):
        with open(log, "a", encoding="utf-8") as out:
            out.write(line + "\n")
        return super().pre_process_command(line, cmd, arg)

    def ftp_LIST(self, path):
        import os

        lines = [listed(n, 64) for n in hostile]
        for entry in sorted(os.listdir(folder)):
            full = os.path.join(folder, entry)
            if os.path.isfile(full):
                lines.append(listed(entry, os.path.getsize(full)))
        self.push_dtp_data("".join(lines).encode("utf-8"), cmd="LIST")
        return path


authorizer = DummyAuthorizer()
authorizer.add_user(user, password, folder, perm="elradfmw")
Hostile.authorizer = authorizer
Hostile.passive_ports = None
server = FTPServer(("127.0.0.1", int(port)), Hostile)
server.serve_forever()
