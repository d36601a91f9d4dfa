"""The SFT answers' styles (`python -m data_construction.sim --reasoning`, `data.sim_reasoning`):
names only, so that the config validator checks them without loading the renderer."""

REASONING = ("full", "brief", "observe", "passed")  # written by reasoning.response
