"""malsori.storage"""
