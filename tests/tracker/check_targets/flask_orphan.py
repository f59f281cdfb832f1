"""Targets the check command must refuse: an extension never given to an app, and an
app without Flask-SQLAlchemy."""

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()

app = Flask(__name__)
