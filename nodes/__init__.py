"""ComfyUI nodes: thin adapters over the engine in ``pixart_delta_core``."""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
