"""esmsae web app (Streamlit). Placeholder overview until the index and demo bundle land."""
import streamlit as st

st.set_page_config(page_title="esmsae", layout="wide")
st.title("esmsae")
st.write(
    "Sparse autoencoders for protein language models. Train one with "
    "`python -m esmsae pipeline --help`; the feature browser, sequence inspector and "
    "group comparison pages arrive with the feature index."
)
