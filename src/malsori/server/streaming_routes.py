"""Placeholder router until its routes land."""

from fastapi import APIRouter

router = APIRouter()
