"""The results viewer behind the Airflow UI plugin (``plugins/tilescope_viewer.py``).

Pure pieces — identifier and S3-key validation (:mod:`.keys`), JSON shaping of run state,
findings and results (:mod:`.shaping`), image downscaling (:mod:`.images`), link building
(:mod:`.links`) — plus the Airflow-facing ones, imported only inside the api-server:
metadata queries (:mod:`.metadata`) and the FastAPI app (:mod:`.app`).
"""
