import os
import sys

from labelloop.cli.main import main

code = main()
if code != 0 and "joblib" not in sys.modules:
    # An error exit skips the interpreter's teardown: a native library's thread pool sometimes aborted
    # the process while shutting down after a clean error ("terminate called without an active
    # exception", SIGABRT), so a user saw a crash instead of the message and exit code 2. Nothing is
    # left to write on this path. (With joblib loaded its worker processes need the normal exit.)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
