"""The arrival side: S3 objects under ``incoming/`` (:mod:`.arrivals`), S3 event
notifications (:mod:`.events`), exactly-once claims in SQL (:mod:`.claims`) and
the flow that claims, screens, batches and settles them (:mod:`.flow`).
"""
