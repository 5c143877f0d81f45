"""malsori.jobs"""
