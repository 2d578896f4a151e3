"""esmsae web app: `make app` (or `streamlit run app.py`). Opens the demo bundle by default."""
import streamlit as st

st.set_page_config(page_title="esmsae", layout="wide")
pages = [
    st.Page("pages/overview.py", title="Overview", url_path="overview"),
    st.Page("pages/features.py", title="Feature browser", url_path="features"),
    st.Page("pages/inspector.py", title="Sequence inspector", url_path="inspector"),
    st.Page("pages/groups.py", title="Group comparison", url_path="groups"),
    st.Page("pages/training.py", title="Training", url_path="training"),
]


KNOWN_PATHS = {"", "home"} | {p.url_path for p in pages}


def _home():
    # "/" opens the overview under its own address: Streamlit serves its default page only at "/",
    # so /overview (a bookmark, a shared link) would otherwise be "Page not found". An unknown address
    # also lands here: say so instead of silently showing the overview.
    from urllib.parse import urlparse

    path = urlparse(st.context.url or "").path.strip("/").split("/")[-1] if st.context.url else ""
    if path not in KNOWN_PATHS:
        st.warning(f"There is no page /{path}. The pages are: " + ", ".join(f"/{p.url_path}" for p in pages) + ".")
        st.page_link(pages[0], label="Open the Overview")
        st.stop()
    st.switch_page(pages[0], query_params=dict(st.query_params))


# our own sidebar links: with a pages/ folder Streamlit would otherwise also list the raw file names
current = st.navigation([st.Page(_home, title="Home", url_path="home", default=True), *pages], position="hidden")
st.sidebar.markdown("### esmsae")
for p in pages:
    st.sidebar.page_link(p)
st.sidebar.divider()
current.run()
