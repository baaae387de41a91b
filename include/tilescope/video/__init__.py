"""Video objects (AVI, MP4/MOV, Matroska/WebM): sampled frames analyzed like images.

``decoder`` reads frames with OpenCV's bundled FFmpeg, ``sampling`` picks N per second,
``pipeline`` holds the stages (``run_video`` for the CLI; (frame, region) units merged per
frame), ``steps`` the DAG task bodies (each staged frame a source of
:mod:`tilescope.units`' work units), ``contact_sheet`` the overlay picture.
"""
