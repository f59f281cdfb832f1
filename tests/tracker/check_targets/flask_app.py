"""A Flask app with Flask-SQLAlchemy configured the way the issue's users did it: keys
that 3.x ignores, modification tracking with a receiver, query recording, echo."""

import os
import tempfile

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_sqlalchemy.track_modifications import models_committed

#: a file database (QueuePool): never created, nothing connects to it
DATABASE = os.path.join(tempfile.gettempdir(), "retort-check-flask-app.db")

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{DATABASE}"
app.config["SQLALCHEMY_BINDS"] = {"reports": "sqlite:///:memory:"}
app.config["SQLALCHEMY_POOL_SIZE"] = 20
app.config["SQLALCHEMY_POOL_RECYCLE"] = 280
app.config["SQLALCHEMY_COMMIT_ON_TEARDOWN"] = True
app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = True
app.config["SQLALCHEMY_RECORD_QUERIES"] = True
app.config["SQLALCHEMY_ECHO"] = True

db = SQLAlchemy(app)


class Order(db.Model):
    id = db.Column(db.Integer, primary_key=True)


def reindex_orders(sender, changes):
    """A receiver that depends on modification tracking."""


# for this app only: other apps in a test process must not see it
models_committed.connect(reindex_orders, sender=app)
