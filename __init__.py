"""pixart-delta: PixArt-δ for ComfyUI.

ComfyUI imports this file as a package named after the pack's folder. Tools that walk the checkout
(pytest collecting a folder named ``pixart-delta``, say) may import it as a lone module, where the
nodes' package cannot be resolved: it then exports no nodes instead of failing.

Loaded by ComfyUI, the pack also lists its embedded model's folders among ComfyUI's model folders.
"""

if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from .nodes.host import register_embedded_models

    register_embedded_models()
else:
    NODE_CLASS_MAPPINGS: dict[str, type] = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
