"""A Flask-SQLAlchemy application with a default database and two binds.

    E2E_MAIN_DB, E2E_AUDIT_DB, E2E_CACHE_DB   SQLite files (created by init_db())

Routes (every response carries ``X-Worker-Pid``, the body never does; ``?wait=s`` on
any of them sleeps first, so that concurrent requests spread over the workers):

    POST /notes?text=…     a note (default database) and its audit entry (bind "audit")
    GET  /notes            the notes and how many audit entries there are
    GET  /cache/<key>      a cache entry (bind "cache"), created at the first read
    GET  /slow?seconds=s   sleeps, then counts the notes (keeps a worker busy)
    GET  /committed        what the models_committed receivers saw in this process

It knows nothing of the agent.
"""

from __future__ import annotations

import os
import time

from flask import Flask, jsonify, request
from flask_sqlalchemy import SQLAlchemy
from flask_sqlalchemy.track_modifications import before_models_committed, models_committed

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{os.environ['E2E_MAIN_DB']}"
app.config["SQLALCHEMY_BINDS"] = {
    "audit": f"sqlite:///{os.environ['E2E_AUDIT_DB']}",
    "cache": f"sqlite:///{os.environ['E2E_CACHE_DB']}",
}
app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = True  # the receivers below need it
db = SQLAlchemy(app)


class Note(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    text = db.Column(db.String(200), nullable=False)


class AuditEntry(db.Model):
    __bind_key__ = "audit"
    id = db.Column(db.Integer, primary_key=True)
    action = db.Column(db.String(50), nullable=False)
    subject = db.Column(db.String(200), nullable=False)


class CacheEntry(db.Model):
    __bind_key__ = "cache"
    key = db.Column(db.String(100), primary_key=True)
    value = db.Column(db.String(200), nullable=False)


committed: list[str] = []
about_to_commit: list[int] = []


@before_models_committed.connect_via(app)
def count_pending(sender, changes):
    about_to_commit.append(len(changes))


@models_committed.connect_via(app)
def remember_changes(sender, changes):
    committed.extend(f"{type(obj).__name__}:{op}" for obj, op in changes)


@app.before_request
def take_your_time():
    wait = request.args.get("wait")
    if wait:
        time.sleep(float(wait))


@app.after_request
def worker_pid(response):
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


@app.post("/notes")
def add_note():
    text = request.args["text"]
    note = Note(text=text)
    db.session.add(note)
    db.session.add(AuditEntry(action="add-note", subject=text))
    db.session.commit()
    return jsonify(id=note.id, text=text), 201


@app.get("/notes")
def list_notes():
    notes = db.session.execute(db.select(Note).order_by(Note.id)).scalars().all()
    audited = db.session.execute(db.select(db.func.count(AuditEntry.id))).scalar_one()
    return jsonify(notes=[{"id": n.id, "text": n.text} for n in notes], audited=audited)


@app.get("/cache/<key>")
def cache(key):
    entry = db.session.get(CacheEntry, key)
    if entry is None:
        entry = CacheEntry(key=key, value=key.upper())
        db.session.add(entry)
        db.session.commit()
        return jsonify(key=key, value=entry.value, created=True)
    return jsonify(key=key, value=entry.value, created=False)


@app.get("/slow")
def slow():
    time.sleep(float(request.args.get("seconds", "0.3")))
    return jsonify(notes=db.session.execute(db.select(db.func.count(Note.id))).scalar_one())


@app.get("/committed")
def what_was_committed():
    return jsonify(committed=committed, batches=about_to_commit)


def init_db() -> None:
    with app.app_context():
        db.create_all()


if __name__ == "__main__":
    init_db()
