"""Video objects (AVI, MP4/MOV, Matroska/WebM): sampled frames analyzed like images.

``decoder`` reads frames with OpenCV's bundled FFmpeg, ``sampling`` picks N per second,
``units`` turns (frame, region) pairs into chunks a DAG task maps over, ``pipeline`` holds
the stages (``run_video`` for the CLI), ``steps`` the DAG task bodies, ``contact_sheet`` the
overlay picture.
"""
