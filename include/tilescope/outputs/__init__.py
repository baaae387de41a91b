"""What a finished run leaves behind: result files (:mod:`.writers`), the overlay
picture (:mod:`.overlay`), the SQL catalog (:mod:`.catalog`), outgoing
notifications (:mod:`.notifications`), per-claim tallies (:mod:`.tallies`) and
StatsD metrics (:mod:`.metrics`).
"""
