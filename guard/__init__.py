"""whisper-guard: stops Whisper from shipping text that was never spoken.

The distribution on PyPI is `attractor-guard` (the name `whisper-guard` belongs to an unrelated
project); the console script is `whisper-guard` and the import package is `guard`.
"""

DISTRIBUTION = "attractor-guard"
