"""malsori.streaming"""
