"""Research utilities, not needed to render: quality yardsticks (:mod:`.metrics`), the toy
model's procedural world (:mod:`.toyworld`), the tuning and test renders every quality claim is
measured on (:mod:`.sets`) and their means and paired differences with intervals (:mod:`.stats`).
Importing them does not import diffusers."""
