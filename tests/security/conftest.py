"""The attack suite: a plain role (LOGIN, no superuser, a data scientist's grants) tries to get another
role's rights or harm another role's work through madlib_dl, on a server with Debian's pg_hba. Every test
here is an attack that worked before the defence it names: it asserts that the attack's code never runs
as another role, nothing of another role's is read or changed, and the victim's results are intact.

The fixtures are the integration suite's (a throwaway server, the plain role alice, fresh databases)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from tests.integration.conftest import *  # noqa: E402,F401,F403  (fixtures: server, plain_role, ...)
from tests.integration.conftest import Role, Server  # noqa: E402,F401
