"""Everything that speaks Airflow: connections as clients, task callbacks, metrics through
Airflow's stats client, the deferrable analyze operator and its trigger.

Nothing below this layer imports Airflow except through :mod:`.connections`, the one door
(models and clients given a ``conn_id`` ask it for their client, inside the call).
"""
