"""esmsae web app: `make app` (or `streamlit run app.py`). Opens the demo bundle by default."""
import streamlit as st

st.set_page_config(page_title="esmsae", layout="wide")
pages = [
    st.Page("pages/overview.py", title="Overview", url_path="overview", default=True),
    st.Page("pages/features.py", title="Feature browser", url_path="features"),
    st.Page("pages/inspector.py", title="Sequence inspector", url_path="inspector"),
    st.Page("pages/groups.py", title="Group comparison", url_path="groups"),
    st.Page("pages/training.py", title="Training", url_path="training"),
]
st.navigation(pages).run()
