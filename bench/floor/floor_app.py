"""The floor for bench/pages.py: a Streamlit page that only writes one line. Its load time is what any
page of any Streamlit app pays on this machine (the frontend, the websocket, a script run)."""
import streamlit as st

st.set_page_config(page_title="floor", layout="wide")
st.write("floor page ready")
