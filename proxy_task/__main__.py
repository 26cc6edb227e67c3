"""Container entrypoint: `python -m proxy_task`.

The configuration comes from the file named by CUSTOS_CONFIG (default
/etc/custos/custos.yaml), so the same image serves every deployment.
"""

import logging
import os
import sys
from pathlib import Path

from custos.config import ConfigError, load_config
from proxy_task.app import run


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("CUSTOS_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        run(load_config(Path(os.environ.get("CUSTOS_CONFIG", "/etc/custos/custos.yaml"))))
    except ConfigError as error:
        print(f"custos: {error}", file=sys.stderr)
        return 2
    return 0


sys.exit(main())
