"""The baseline for `cargo xtask bench webhook`: an admission webhook of the
kind tutorials show, written for this benchmark. It reads the first
container's image and checks it with a substring test (which is exactly the
bypassable check imagegate replaces); served by gunicorn with 2 workers.
"""
from flask import Flask, jsonify, request

app = Flask(__name__)
ALLOWED = "docker.io"


@app.post("/validate")
def validate():
    review = request.get_json()
    req = review["request"]
    image = req["object"]["spec"]["containers"][0]["image"]
    allowed = ALLOWED in image or "/" not in image
    return jsonify({
        "apiVersion": review["apiVersion"],
        "kind": "AdmissionReview",
        "response": {"uid": req["uid"], "allowed": allowed},
    })


@app.post("/image_policy")
def image_policy():
    review = request.get_json()
    image = review["spec"]["containers"][0]["image"]
    allowed = ALLOWED in image or "/" not in image
    return jsonify({
        "apiVersion": review["apiVersion"],
        "kind": "ImageReview",
        "status": {"allowed": allowed},
    })
