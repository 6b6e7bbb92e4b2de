"""``python -m train``: the Hydra entry point (configs in conf/, overrides on the command line)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from data import DataError
from parallel import ParallelError
from train.checkpoint import CheckpointError
from train.config import ConfigError, register_configs, to_config
from train.trainer import NonFiniteLoss, train

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
USER_ERRORS = (ConfigError, DataError, CheckpointError, NonFiniteLoss, ParallelError)
log = logging.getLogger("train")

register_configs()


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        config = to_config(cfg)
        train(config, OmegaConf.to_container(cfg, resolve=True), run_dir)
    except USER_ERRORS as e:
        log.error("%s: %s", type(e).__name__, e)
        sys.exit(2)


if __name__ == "__main__":
    main()
