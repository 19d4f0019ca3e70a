"""The same workflow against an object store: inputs and the store under s3:// (a local S3 server)."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CURATION = str(Path(sys.executable).parent / "curation")

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def s3_env():
    """An S3-compatible server on 127.0.0.1 (moto), with the variables a real deployment would set."""
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "AWS_ALLOW_HTTP": "true"}
    yield env
    server.stop()


def test_demo_workflow_on_s3_inputs_into_an_s3_store(s3_env, media, models, tmp_path):
    import boto3
    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    s3.create_bucket(Bucket="media")
    for name in ("vr_face1.mp4", "lp_d0.mp4"):
        s3.upload_file(str(media / name), "media", f"videos/{name}")
    s3.put_object(Bucket="media", Key="videos/notes.txt", Body=b"not a video")  # not listed
    env = {**os.environ, **s3_env}
    run = subprocess.run([CURATION, "run", str(ROOT / "workflows" / "demo.yaml"), "--models", str(models), "--input",
                          "s3://media/videos", "--store", "s3://media/store"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    keys = {o["Key"].split("/")[1] for o in s3.list_objects_v2(Bucket="media", Prefix="store/")["Contents"]}
    assert {"videos.lance", "shots.lance", "clips.lance", "status.lance", "runs.lance"} <= keys
    q = subprocess.run([CURATION, "query", "--store", "s3://media/store", "--table", "videos",
                        "--columns", "uri,has_audio,speech_ratio,error", "--format", "csv"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert q.returncode == 0, q.stderr
    rows = sorted(q.stdout.strip().splitlines()[1:])
    assert len(rows) == 2
    uri, has_audio, ratio, err = rows[0].split(",")
    assert (uri, has_audio, float(ratio), err) == ("s3://media/videos/lp_d0.mp4", "False", 0.0, "")
    uri, has_audio, ratio, err = rows[1].split(",")
    assert uri == "s3://media/videos/vr_face1.mp4" and has_audio == "True" and float(ratio) > 0.5
    assert err == ""
    clips = subprocess.run([CURATION, "query", "--store", "s3://media/store", "--table", "clips",
                            "--columns", "clip_kind,sharpness,jump_count,speech_ratio", "--format", "jsonl"],
                           env=env, capture_output=True, text=True, timeout=120)
    rows = [json.loads(line) for line in clips.stdout.strip().splitlines()]
    assert sum(r["clip_kind"] == "shot" for r in rows) == 2        # one shot clip per video
    assert any(r["clip_kind"] == "person" for r in rows)           # vr_face1's speaker
    # shot and person clips are both measured, so the workflow's filters judge both kinds
    assert all(r["sharpness"] is not None and r["jump_count"] is not None
               and r["speech_ratio"] is not None for r in rows), rows
