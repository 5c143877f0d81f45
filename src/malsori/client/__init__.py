"""malsori.client"""
