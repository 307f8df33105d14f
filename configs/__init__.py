"""The configs, each a module with ``get_config()``.

Commands take them by path (``--config=configs/digits.py``); code and tests
import them (``from configs import digits``).
"""
