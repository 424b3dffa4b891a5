"""ms-ddpm: train, export and deploy the MindSpore tutorial's DDPM.

Installed, the repository root is this package, `ms_ddpm` (pyproject.toml maps it):
`ms_ddpm.runtime` (sampling without MindSpore), `ms_ddpm.train`, `ms_ddpm.export`, `ms_ddpm.bench`
and `ms_ddpm.cli` (the `ms-ddpm` command).
"""
