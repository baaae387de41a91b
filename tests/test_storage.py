"""Storage against a real S3 server (moto on loopback): reads, writes, ranged reads."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import tifffile

from tilescope.errors import BadImageError, ConfigError
from tilescope.readers import TiffReader, open_image
from tilescope.slicing import Box
from tilescope.storage import (
    RangedS3File,
    object_size,
    parse_s3_uri,
    read_bytes,
    read_head,
    read_start,
    sha256_hex,
    write_bytes,
)


def test_parse_s3_uri() -> None:
    loc = parse_s3_uri("s3://bucket/incoming/a b/ü.jpg")
    assert (loc.bucket, loc.key) == ("bucket", "incoming/a b/ü.jpg")
    for key in ("incoming/scan #1.png", "incoming/what?.png", "incoming/a%20b;c=d.png"):
        assert parse_s3_uri(f"s3://bucket/{key}").key == key  # no URL fragment or query
    for bad in ("bucket/key", "s3://bucket", "s3:///key", "http://x/y"):
        with pytest.raises(ConfigError):
            parse_s3_uri(bad)


def test_write_then_read_and_size(s3_client) -> None:
    s3_client.create_bucket(Bucket="bkt")
    write_bytes("s3://bkt/results/x.json", b'{"a": 1}', "application/json", client=s3_client)
    assert read_bytes("s3://bkt/results/x.json", client=s3_client) == b'{"a": 1}'
    assert object_size("s3://bkt/results/x.json", client=s3_client) == 8
    head = s3_client.head_object(Bucket="bkt", Key="results/x.json")
    assert head["ContentType"] == "application/json"


def test_default_client_comes_from_the_environment(s3_client) -> None:
    s3_client.create_bucket(Bucket="envb")
    write_bytes("s3://envb/k", b"v")  # no client: AWS_ENDPOINT_URL points at moto
    assert read_bytes("s3://envb/k") == b"v"


def test_missing_object_and_bucket_are_bad_images(s3_client) -> None:
    s3_client.create_bucket(Bucket="bkt")
    with pytest.raises(BadImageError, match="no such object"):
        read_bytes("s3://bkt/missing.jpg", client=s3_client)
    with pytest.raises(BadImageError, match="no such object"):
        read_bytes("s3://nobucket/x.jpg", client=s3_client)
    with pytest.raises(BadImageError):
        object_size("s3://bkt/missing.jpg", client=s3_client)


def test_local_write_is_atomic_and_creates_folders(tmp_path) -> None:
    target = tmp_path / "a" / "b" / "c.json"
    write_bytes(str(target), b"x")
    assert target.read_bytes() == b"x"
    assert [p.name for p in target.parent.iterdir()] == ["c.json"]  # no temp file left


def test_ranged_file_reads_only_what_is_asked(s3_client) -> None:
    s3_client.create_bucket(Bucket="bkt")
    data = bytes(range(256)) * 100
    s3_client.put_object(Bucket="bkt", Key="blob", Body=data)
    handle = RangedS3File("s3://bkt/blob", client=s3_client)
    handle.seek(1000)
    assert handle.read(10) == data[1000:1010]
    handle.seek(-5, io.SEEK_END)
    assert handle.read() == data[-5:]
    assert handle.read(3) == b""
    assert handle.bytes_read == 15 and handle.requests == 2


def test_head_and_streamed_hash_of_objects_and_files(s3_client, tmp_path) -> None:
    s3_client.create_bucket(Bucket="bkt")
    data = bytes(range(256)) * 40_000  # ~10 MB: more than one hash chunk below
    s3_client.put_object(Bucket="bkt", Key="blob", Body=data)
    (tmp_path / "blob").write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    for uri in ("s3://bkt/blob", str(tmp_path / "blob")):
        assert read_head(uri, 16, s3_client) == data[:16]
        assert sha256_hex(uri, s3_client, chunk_bytes=1 << 20) == expected
    with pytest.raises(BadImageError, match="no such object"):
        sha256_hex("s3://bkt/missing", s3_client)
    with pytest.raises(BadImageError, match="no such file"):
        read_head(str(tmp_path / "missing"), 16)


def test_tiled_tiff_thumbnail_fetches_a_tile_row_per_request(s3_client) -> None:
    s3_client.create_bucket(Bucket="bkt")
    pixels = np.random.default_rng(1).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    out = io.BytesIO()
    tifffile.imwrite(out, pixels, tile=(128, 128))
    s3_client.put_object(Bucket="bkt", Key="big.tif", Body=out.getvalue())
    handle = RangedS3File("s3://bkt/big.tif", client=s3_client)
    reader = TiffReader(handle)
    before = handle.requests
    thumb = reader.thumbnail(256)
    assert thumb.shape == (256, 256, 3)
    assert abs(float(thumb.mean()) - float(pixels.mean())) < 1.0
    assert handle.requests - before == 8  # 8 tile rows of 8 tiles: a GET per row, not per tile


def test_tiled_tiff_region_over_ranged_s3_reads_a_fraction(s3_client) -> None:
    s3_client.create_bucket(Bucket="bkt")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    out = io.BytesIO()
    tifffile.imwrite(out, pixels, tile=(128, 128))
    s3_client.put_object(Bucket="bkt", Key="big.tif", Body=out.getvalue())
    handle = RangedS3File("s3://bkt/big.tif", client=s3_client)
    reader = TiffReader(handle)
    crop = reader.read(Box(130, 130, 250, 250))
    assert np.array_equal(crop, pixels[130:250, 130:250])
    assert handle.bytes_read < len(out.getvalue()) / 10  # one tile + header, not the image


def test_open_image_from_s3(s3_client, sample) -> None:
    s3_client.create_bucket(Bucket="bkt")
    data = sample("chelsea").read_bytes()
    s3_client.put_object(Bucket="bkt", Key="incoming/cat.png", Body=data)
    reader, info = open_image("s3://bkt/incoming/cat.png", client=s3_client)
    assert (info.width, info.height, info.bytes) == (451, 300, len(data))
    assert info.uri == "s3://bkt/incoming/cat.png" and len(info.image_id) == 16
    reader.close()


def test_read_start_gives_a_small_object_whole_and_a_big_one_its_size(s3_client,
                                                                       tmp_path) -> None:
    s3_client.create_bucket(Bucket="starts")
    small, big = b"x" * 1000, bytes(range(256)) * 4096
    s3_client.put_object(Bucket="starts", Key="small", Body=small)
    s3_client.put_object(Bucket="starts", Key="big", Body=big)
    s3_client.put_object(Bucket="starts", Key="empty", Body=b"")
    assert read_start("s3://starts/small", 4096) == (small, 1000)  # one request, whole
    assert read_start("s3://starts/big", 4096) == (big[:4096], len(big))
    assert read_start("s3://starts/empty", 4096) == (b"", 0)
    with pytest.raises(BadImageError, match="no such object"):
        read_start("s3://starts/missing", 4096)
    local = tmp_path / "local.bin"
    local.write_bytes(big)
    assert read_start(str(local), 10) == (big[:10], len(big))


def test_s3_client_protocol_names_only_boto3_calls() -> None:
    """Every call of :class:`S3Client` (and its paginator's) exists on boto3's S3 client,
    with the same keyword arguments — a misspelled or invented one would type-check against
    the protocol and fail at run time."""
    import inspect

    import boto3

    from tilescope.storage import S3Client, S3Paginator

    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="k",
                          aws_secret_access_key="s", endpoint_url="http://127.0.0.1:9")
    calls = [name for name, value in vars(S3Client).items()
             if callable(value) and not name.startswith("_")]
    assert {"get_object", "put_object", "head_object", "get_paginator"} <= set(calls)
    model = client.meta.service_model
    for name in calls:
        assert callable(getattr(client, name, None)), f"boto3's S3 client has no {name}"
        api = "".join(part.title() for part in name.split("_"))  # list_objects_v2: ListObjectsV2
        if api not in model.operation_names:  # a transfer helper (copy, upload_file...)
            continue
        named = {p.name for p in inspect.signature(getattr(S3Client, name)).parameters.values()
                 if p.name != "self" and p.kind is not p.VAR_KEYWORD}
        shape = model.operation_model(api).input_shape
        assert named <= set(shape.members if shape is not None else ()), (name, named)
    assert callable(getattr(client.get_paginator("list_objects_v2"), "paginate", None))
    assert [n for n, v in vars(S3Paginator).items() if callable(v)
            and not n.startswith("_")] == ["paginate"]
