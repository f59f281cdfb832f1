"""The near miss of flask_app.py: the same intent configured the 3.x way."""

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from tests.tracker.check_targets.models import CONVENTION

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_recycle": 280}
app.config["SQLALCHEMY_COMMIT_ON_TEARDOWN"] = False   # ignored, and harmless off
app.config["SQLALCHEMY_RECORD_QUERIES"] = True         # fine: TESTING is on
app.config["TESTING"] = True

db = SQLAlchemy(metadata=sa.MetaData(naming_convention=CONVENTION))
db.init_app(app)


class Order(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    reference = db.Column(db.String(20), unique=True)
