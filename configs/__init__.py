# Hydra config groups for autoenc. This folder ships inside the package as autoenc_cli.configs.
