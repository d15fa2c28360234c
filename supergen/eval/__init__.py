"""Research utilities, not needed to render: quality yardsticks (:mod:`.metrics`) and the toy
model's procedural world (:mod:`.toyworld`). Importing them does not import diffusers."""
