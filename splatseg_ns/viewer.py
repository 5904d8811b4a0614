"""The splatseg panel of the nerfstudio web viewer: click (or name) an object, see it, save it, export it.

Glue only, on `core` alone: a click picks the candidate that the Gaussians blended at its pixel
carry most weight for (`core.render.contributors.click_candidate`, Gaussians of no candidate left out, so
a floater in front cannot steal it), and `core.segment.selection.select_clicked` turns clicks and names
into Gaussians (the same rule as `splatseg select`); displays are `core.render.display`, files are
`core.io.selection_file` and `core.export.writer` (the same export as `splatseg export`).

nerfstudio finds viewer elements by walking the pipeline's attributes and sub-modules
(`viewer.utils.parse_object`: public attributes only, recursing into `nn.Module`s, in the
sorted order of the attribute names), and folders follow the attribute path. So the panel is
an `nn.Module` on the model (`model.splatseg`) holding one module per folder, whose elements are
named by position; every other handle is private, or it would be found twice. The panel
reaches its model through a weak reference: as a sub-module it would make a cycle.

A click (`ViewerControl.register_pointer_cb("click")`, armed by the "Click to select" button,
one click per press) gives the ray's origin and a normalised screen position. Nothing is
rendered: the Gaussians blended at that pixel of the browser's camera (at the size of the
viewer's settled frame) and their weights are found directly (`core.render.contributors`, through a grid
of Gaussian cells, with the display's hidden Gaussians left out), exactly as a full render would
weigh them: what `splatseg select` does on a dataset view. The clicked pixels' contributors are
kept, not the Gaussians: the selection is recomputed from them when the level or the threshold
changes, or training changes the Gaussians.

The display never touches `gauss_params`: `get_outputs` asks `display_overrides()` for
replacement tensors (opacity logits pushed below the rasteriser's 1/255 alpha cut to hide
Gaussians, colours for the highlight, segments and feature PCA) and renders those instead. It
applies to the viewer's render threads only, so evaluation during training and the
command-line tools always see the scene as trained.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import threading
import time
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from nerfstudio.viewer.viewer_elements import (
    ViewerButton,
    ViewerCheckbox,
    ViewerClick,
    ViewerControl,
    ViewerDropdown,
    ViewerElement,
    ViewerSlider,
    ViewerText,
)
from torch import nn

from splatseg_ns.core.export.writer import export_selection
from splatseg_ns.core.extract.clip_embeddings import clip_text_encoder
from splatseg_ns.core.features import LEVELS, level_features
from splatseg_ns.core.io.ply import segment_colours
from splatseg_ns.core.io.selection_file import Selection, fingerprint, read_selection, write_selection
from splatseg_ns.core.render import display
from splatseg_ns.core.render.contributors import click_candidate
from splatseg_ns.core.segment.selection import (
    MIN_CLICK_OPACITY,
    ClickIndex,
    select_by_text,
    select_clicked,
)

if TYPE_CHECKING:
    from nerfstudio.cameras.cameras import Cameras

DISPLAY_MODES = ["everything", "selection only", "without selection", "segments", "feature PCA"]


class ViewerMarkdown(ViewerElement[str]):
    """Read-only text shown in full, as markdown (a disabled text box cuts a message to the panel's width).

    nerfstudio 1.1.5 has no markdown element; this one installs like the others. Its `value` is
    the plain text, shown after the name in bold; paths may break after each "/" (the panel is narrow)."""

    def __init__(self, name: str, value: str = ""):
        super().__init__(name)
        self._value = value

    @property
    def value(self) -> str:
        return self._value

    @value.setter
    def value(self, value: str) -> None:
        self._value = value
        if self.gui_handle is not None:
            self.gui_handle.content = self._content()  # type: ignore[union-attr]

    def _content(self) -> str:
        if not self._value:
            return ""
        shown = re.sub(r"([\\`*_{}\[\]<>#|~])", r"\\\1", self._value).replace("/", "/\u200b")
        return f"**{self.name}:** {shown}"

    def _create_gui_handle(self, viser_server) -> None:
        self.gui_handle = viser_server.gui.add_markdown(self._content())  # type: ignore[assignment]

    def install(self, viser_server) -> None:
        self._create_gui_handle(viser_server)


class _Folder(nn.Module):
    """One folder of the panel: nerfstudio installs elements sorted by attribute name, so they are named by position."""

    def add(self, element: ViewerElement) -> ViewerElement:
        setattr(self, f"item_{len(self.__dict__.get('_order', [])):02d}", element)
        self.__dict__.setdefault("_order", []).append(element)
        return element


class SplatsegViewer(nn.Module):
    """The splatseg folder of the viewer's control panel, and the selection it makes.

    Folders, in this order: "Clicks & names" (arm a click, level, add/subtract, similarity
    threshold, name query, clear, status and click time), "Display" (what to show, highlight),
    "Export" (file name, save selection + the `splatseg export` command, export PLY).

    Without a viewer (tests, scripts) the same methods drive it: `click_pixel(camera, x, y)`,
    `select_by_name`, `clear`, `render(camera)` (the view as the viewer shows it),
    `save_selection`, `export_ply`; `bind` tells it the run's config.yml and pipeline, which in
    the viewer come from nerfstudio's `Viewer`.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self._model_ref = weakref.ref(model)
        self.viewer_control = ViewerControl()  # nerfstudio sets it up with the viewer (found like the elements)
        self._scope = threading.local()
        self._positive: List[torch.Tensor] = []  # full features at the clicked pixels
        self._negative: List[torch.Tensor] = []
        self._screen: List[Tuple[str, List[float]]] = []  # (add|subtract, screen position) for the selection file
        self._text: Optional[str] = None
        self._text_embedding: Optional[torch.Tensor] = None
        self._prompt_version = 0  # bumped by every change of the prompts above: part of the selection's cache key
        self._encode_text: Optional[Callable[[Sequence[str]], torch.Tensor]] = None
        # The bound run, in a namespace: a pipeline set as an attribute would become a sub-module (a cycle).
        self._bound = SimpleNamespace(config_path=None, pipeline=None)
        self._cache: Dict[tuple, object] = {}
        self._pca: Dict[str, tuple] = {}
        self.last_click_ms: Optional[Tuple[float, float]] = None
        """(features at the pixel, selection) of the last click, in milliseconds."""

        click, display, export = _Folder(), _Folder(), _Folder()
        self.add_module("Clicks & names", click)
        self.add_module("Display", display)
        self.add_module("Export", export)
        self._arm = click.add(ViewerButton("Click to select", cb_hook=lambda _: self._guarded(self.arm_click)))
        self._level = click.add(ViewerDropdown(
            "Level", "coarse", ["coarse", "fine"], cb_hook=lambda _: self._guarded(self._report),
            hint="coarse: whole objects; fine: their parts. Clicks made so far are re-applied."))
        self._mode = click.add(ViewerDropdown(
            "Click mode", "add", ["add", "subtract"], hint="Whether the next click adds its segment or removes it."))
        self._threshold = click.add(ViewerSlider(
            "Similarity threshold", 0.0, 0.0, 1.0, 0.05, cb_hook=lambda _: self._guarded(self._report),
            hint="Keep only Gaussians at least this sure of their segment: the share of their rendered weight on its "
                 "masks (their vote), or before the votes are cast their cosine to its centre; 0 keeps all."))
        self._name = click.add(ViewerText(
            "Name", "", hint="What to select by name, e.g. 'mushroom' (runs trained with --pipeline.datamanager."
                             "text-queries True). It replaces the selection; clicks then add or subtract."))
        click.add(ViewerButton("Select by name",
                               cb_hook=lambda _: self._guarded(lambda: self.select_by_name(self._name.value))))
        click.add(ViewerButton("Clear selection", cb_hook=lambda _: self._guarded(self.clear)))
        self._status = click.add(ViewerMarkdown("Status", "Press 'Click to select', then click an object."))
        self._timing = click.add(ViewerMarkdown("Click time"))
        self._show = display.add(ViewerDropdown(
            "Show", "everything", DISPLAY_MODES,
            hint="segments: every Gaussian coloured by its global candidate at the chosen level; feature PCA: "
                 "the features projected on 3 directions fixed for the run."))
        self._highlight = display.add(ViewerCheckbox("Highlight selection", True, hint="Tint the selected Gaussians."))
        self._file_name = export.add(ViewerText(
            "Selection file", "selection.json", hint="Written beside the run's config.yml."))
        export.add(ViewerButton("Save selection",
                                cb_hook=lambda _: self._guarded(self.save_selection, self._written)))
        self._command = export.add(ViewerText(
            "Export command", "", hint="Exports the saved selection as a PLY; select it all here and copy it."))
        self._invert = export.add(ViewerCheckbox("Invert", False, hint="Export the scene without the selection."))
        self._keep_weak = export.add(ViewerCheckbox(
            "Keep weak members", False, hint="Write every selected Gaussian: none dropped as unsure of its label or as "
                                             "a floater (splatseg export --keep-weak)."))
        export.add(ViewerButton("Export PLY", cb_hook=lambda _: self._guarded(self.export_ply, self._written)))
        self._written = export.add(ViewerMarkdown("Written"))

    # ----------------------------------------------------------------------------------- context
    @property
    def _model(self):
        return self._model_ref()

    def bind(self, config_path: Optional[Path] = None, pipeline=None,
             encode_text: Optional[Callable[[Sequence[str]], torch.Tensor]] = None) -> None:
        """The run's config.yml and pipeline (the viewer's otherwise), and a text encoder (CLIP's otherwise)."""
        self._bound = SimpleNamespace(config_path=Path(config_path).resolve() if config_path is not None else None,
                                      pipeline=pipeline)
        self._encode_text = encode_text

    def _viewer(self):
        return getattr(self.viewer_control, "viewer", None)

    def run_config_path(self) -> Optional[Path]:
        """config.yml of the run: the bound one, else beside the viewer's log file (the run directory)."""
        if self._bound.config_path is not None:
            return self._bound.config_path
        viewer = self._viewer()
        if viewer is None:
            return None
        return (Path(viewer.log_filename).parent / "config.yml").resolve()

    def _config_path(self) -> Path:
        """The run's config.yml, which must exist: selection files name it."""
        config = self.run_config_path()
        if config is None or not config.exists():
            raise FileNotFoundError(f"Cannot find this run's config.yml ({config}); start ns-viewer from the folder "
                                    "you trained in, so that the run's relative output path resolves.")
        return config

    def _pipeline(self):
        viewer = self._viewer()
        return self._bound.pipeline or (viewer.pipeline if viewer else None)

    def _set(self, element: ViewerElement, value) -> None:
        element.value = value  # type: ignore[attr-defined]

    def _say(self, message: str) -> None:
        self._set(self._status, message)

    def _guarded(self, action: Callable[[], object], where: Optional[ViewerElement] = None) -> None:
        """Run an element's action; a failure is shown in the panel instead of ending in the server's log."""
        try:
            action()
        except Exception as err:  # noqa: BLE001 - whatever went wrong, the user reads it in the panel
            self._set(where or self._status, f"Failed: {err}")

    # ------------------------------------------------------------------------------- selection
    @property
    def level(self) -> str:
        return self._level.value

    def _threshold_value(self) -> Optional[float]:
        value = float(self._threshold.value)
        return value if value > 0 else None

    def has_prompts(self) -> bool:
        return bool(self._positive or self._negative or self._text_embedding is not None)

    def _model_version(self, level: str) -> tuple:
        """Changes whenever the Gaussians, their candidates or votes may have (training steps, densification,
        GFL refresh, votes cast)."""
        model = self._model
        centers, votes = model.levels[level].centers, model.levels[level].vote_labels
        return (int(getattr(model, "step", 0)), model.num_points, centers.data_ptr(), tuple(centers.shape),
                votes.data_ptr(), tuple(votes.shape))

    def _click_index(self, level: str) -> Optional[ClickIndex]:
        """The level's ClickIndex (`SplatsegModel.level_index`), built once per model version."""
        key = ("index", level, self._model_version(level))
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[:2] != ("index", level)}
            self._cache[key] = self._model.level_index(level)
        return self._cache[key]  # type: ignore[return-value]

    def _gaussian_features(self, level: str) -> torch.Tensor:
        return level_features(self._model.seg_features.detach(), level, self._model.config.coarse_feature_dim)

    @torch.no_grad()
    def selected(self) -> torch.Tensor:
        """bool [N]: the Gaussians the clicks and the name select at the current level and threshold."""
        level, threshold = self.level, self._threshold_value()
        key = ("selected", level, threshold, self._prompt_version, self._model_version(level))
        if key not in self._cache:
            selected = select_clicked(self._click_index(level), self._gaussian_features(level), self._positive,
                                      self._negative, self._named_candidates(level), threshold)
            self._cache = {k: v for k, v in self._cache.items() if k[0] != "selected"}
            self._cache[key] = selected
        return self._cache[key]  # type: ignore[return-value]

    def _named_candidates(self, level: str) -> Optional[torch.Tensor]:
        if self._text_embedding is None:
            return None
        embeddings = self._model.levels[level].clip
        if embeddings.numel() == 0:
            return None
        return select_by_text(self._text_embedding.to(embeddings), embeddings, embeddings.norm(dim=-1) > 0)

    def _report(self) -> None:
        if not self.has_prompts():
            self._say("Nothing selected. Press 'Click to select', then click an object.")
            return
        selected = self.selected()
        how = "" if self._click_index(self.level) is not None else " (no global candidates yet: raw similarity)"
        self._say(f"{int(selected.sum())} of {selected.numel()} Gaussians selected ({self.level}){how}.")

    def clear(self) -> None:
        self._positive, self._negative, self._screen = [], [], []
        self._text, self._text_embedding = None, None
        self._prompt_version += 1
        self._report()

    # ----------------------------------------------------------------------------------- clicks
    def arm_click(self) -> None:
        """Button hook: the next click in the 3D view selects (one click per press, so the camera stays free)."""
        if self._viewer() is None:
            self._say("No viewer is attached.")
            return
        self._click_index(self.level)  # built now (once per run), so that the click's time is the click's
        self.viewer_control.register_pointer_cb("click", self._on_viewer_click)
        if self._arm.gui_handle is not None:
            self._arm.set_disabled(True)
        action = "add it to" if self._mode.value == "add" else "remove it from"
        self._say(f"Click on an object to {action} the selection.")

    def _on_viewer_click(self, click: ViewerClick) -> None:
        """Pointer callback (viser's thread, outside nerfstudio's train lock: take it, the model may be training)."""
        viewer = self._viewer()
        try:
            self.viewer_control.unregister_pointer_cb()
            camera, x, y = self._click_camera(click)
            lock = viewer.train_lock if viewer.train_lock is not None else contextlib.nullcontext()
            with lock:
                self.click_pixel(camera, x, y, screen_pos=list(click.screen_pos))
        except Exception as err:  # noqa: BLE001 - a failed click must not kill the viewer's thread silently
            self._say(f"Click failed: {err}")
        finally:
            if self._arm.gui_handle is not None:
                self._arm.set_disabled(False)
        viewer._trigger_rerender()  # nerfstudio 1.1.5 has no public rerender; its elements' hooks call this one

    def _click_camera(self, click: ViewerClick) -> Tuple["Cameras", float, float]:
        """The clicking browser's camera (the client whose eye is the click ray's origin) and the clicked pixel."""
        viewer = self._viewer()
        clients = viewer.viser_server.get_clients()
        if not clients:
            raise RuntimeError("no browser is connected")
        from nerfstudio.viewer.utils import get_camera
        from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO

        origin = np.asarray(click.origin, dtype=np.float64)
        client = min(clients.values(), key=lambda c: np.linalg.norm(
            np.asarray(c.camera.position) / VISER_NERFSTUDIO_SCALE_RATIO - origin))
        # The size of the viewer's settled frame (RenderStateMachine._calculate_image_res, "high").
        state = viewer.get_camera_state(client)
        max_res = int(viewer.control_panel.max_res)
        height, width = max_res, int(max_res * state.aspect)
        if width > max_res:
            height, width = int(max_res / state.aspect), max_res
        camera = get_camera(state, height, width)
        sx, sy = click.screen_pos
        x = min(max(sx * width, 0.0), width - 1e-3)
        y = min(max(sy * height, 0.0), height - 1e-3)
        return camera, x, y

    @torch.no_grad()
    def click_pixel(self, camera: "Cameras", x: float, y: float, subtract: Optional[bool] = None,
                    screen_pos: Optional[List[float]] = None) -> bool:
        """Click pixel (x, y) of `camera` as shown: add (or subtract) the segment there. False on background."""
        subtract = self._mode.value == "subtract" if subtract is None else subtract
        start = time.perf_counter()
        with self.shown():  # what the user sees: hidden Gaussians are not clicked
            shown_opacities = self.display_overrides().get("opacities")
        found = self._model.pixel_contributors(camera.to(self._model.device), int(x), int(y), shown_opacities)
        opacity = found.opacity  # syncs, so the time below is the pixel's
        reached = time.perf_counter()
        if opacity < MIN_CLICK_OPACITY:
            self._set(self._timing, f"the pixel's Gaussians {1000 * (reached - start):.1f} ms")
            self._say(f"That is empty background (rendered opacity {opacity:.2f}): click on an object.")
            return False
        index = self._click_index(self.level)
        if index is not None and click_candidate(found, index.assignment, index.num_candidates)[0] < 0:
            self._set(self._timing, f"the pixel's Gaussians {1000 * (reached - start):.1f} ms")
            self._say("That pixel shows only Gaussians that belong to no segment (background no mask covered, or "
                      "floaters): click on an object.")
            return False
        (self._negative if subtract else self._positive).append(found)
        self._prompt_version += 1
        width, height = int(camera.width.item()), int(camera.height.item())
        self._screen.append(("subtract" if subtract else "add", screen_pos or [x / width, y / height]))
        selected = self.selected()
        if selected.is_cuda:
            torch.cuda.synchronize(selected.device)
        done = time.perf_counter()
        pixel_ms, selection_ms = self.last_click_ms = (1000 * (reached - start), 1000 * (done - reached))
        self._set(self._timing, f"{pixel_ms + selection_ms:.1f} ms = the pixel's Gaussians {pixel_ms:.1f} ms "
                                f"+ selection {selection_ms:.2f} ms")
        self._report()
        return True

    # ------------------------------------------------------------------------------------ names
    def select_by_name(self, text: str) -> bool:
        """Replace the selection by the segment whose CLIP embedding best matches `text` (False: it could not)."""
        text = text.strip()
        if not text:
            self._say("Type a name first, e.g. 'mushroom'.")
            return False
        if all(self._model.levels[level].clip.numel() == 0 for level in LEVELS):
            self._say("This run has no CLIP embeddings of its segments, so it cannot select by name: train with "
                      "--pipeline.datamanager.text-queries True.")
            return False
        try:
            embedding = self._text_encoder()([text])[0]
        except Exception as err:  # noqa: BLE001 - offline weights, missing package: say so in the panel
            self._say(f"The CLIP text encoder is not available: {err}")
            return False
        self._positive, self._negative, self._screen = [], [], []
        self._text, self._text_embedding = text, torch.as_tensor(embedding).float()
        self._prompt_version += 1
        self._report()
        return True

    def _text_encoder(self) -> Callable[[Sequence[str]], torch.Tensor]:
        """CLIP's text encoder, of the model that embedded this run's masks (the datamanager's config)."""
        if self._encode_text is None:
            pipeline = self._pipeline()
            if pipeline is None:
                raise RuntimeError("no pipeline is attached, so the run's CLIP model is unknown")
            self._encode_text = clip_text_encoder(pipeline.datamanager.config.clip_config, str(self._model.device))
        return self._encode_text

    # ---------------------------------------------------------------------------------- display
    @contextlib.contextmanager
    def shown(self):
        """Within this block, renders of the model in this thread show what the viewer shows."""
        previous = getattr(self._scope, "on", False)
        self._scope.on = True
        try:
            yield
        finally:
            self._scope.on = previous

    @torch.no_grad()
    def render(self, camera: "Cameras") -> Dict[str, torch.Tensor]:
        """The model's outputs for `camera` as the viewer shows them (display mode applied), in eval mode."""
        model = self._model
        was_training = model.training
        model.eval()
        try:
            with self.shown():
                return model.get_outputs_for_camera(camera.to(model.device))
        finally:
            if was_training:
                model.train()

    def _displaying(self) -> bool:
        if getattr(self._scope, "on", False):
            return True
        from nerfstudio.viewer.render_state_machine import RenderStateMachine

        return isinstance(threading.current_thread(), RenderStateMachine)

    @torch.no_grad()
    def display_overrides(self) -> Dict[str, torch.Tensor]:
        """Replacement Gaussian tensors (new ones; `gauss_params` is never written) for the current display.

        Called by `get_outputs` outside training; empty outside the viewer's renders and when
        there is nothing to show differently.
        """
        mode = self._show.value
        if (mode == "everything" and not self.has_prompts()) or not self._displaying():
            return {}
        try:
            return self._overrides(mode)
        except Exception as err:  # noqa: BLE001 - never break the viewer's render thread
            self._say(f"Display failed ({err}); showing the scene.")
            return {}

    def _overrides(self, mode: str) -> Dict[str, torch.Tensor]:
        model = self._model
        selected = self.selected() if self.has_prompts() else None
        if mode in ("selection only", "without selection"):
            if selected is None:
                selected = torch.zeros(model.num_points, dtype=torch.bool, device=model.device)
            visible = selected if mode == "selection only" else ~selected
            return {"opacities": display.hidden_opacities(model.opacities, visible)}
        dc, rest = model.features_dc, model.features_rest
        if mode in ("segments", "feature PCA"):
            colours = self._segment_colours(self.level) if mode == "segments" else self._pca_colours(self.level)
            dc, rest = display.colour_params(colours.to(model.device, dc.dtype), rest, model.config.sh_degree)
        if selected is not None and self._highlight.value and bool(selected.any()):
            dc, rest = display.tinted(selected, dc, rest, model.config.sh_degree)
        if dc is model.features_dc:
            return {}
        return {"features_dc": dc, "features_rest": rest}

    def _segment_colours(self, level: str) -> torch.Tensor:
        key = ("segments", level, self._model_version(level))
        if key not in self._cache:
            index = self._click_index(level)
            labels = index.assignment if index is not None else torch.full((self._model.num_points,), -1)
            if index is None:
                self._say("This run has no global candidates yet, so it has no segments to colour.")
            self._cache = {k: v for k, v in self._cache.items() if k[0] != "segments"}
            self._cache[key] = torch.from_numpy(segment_colours(labels.cpu().numpy())).to(self._model.device)
        return self._cache[key]  # type: ignore[return-value]

    def _pca_colours(self, level: str) -> torch.Tensor:
        key = ("pca", level, self._model_version(level))
        if key not in self._cache:
            features = self._gaussian_features(level)
            if level not in self._pca:  # once per run: the colours of a feature never change between frames
                self._pca[level] = display.fit_feature_pca(features)
            self._cache = {k: v for k, v in self._cache.items() if k[0] != "pca"}
            self._cache[key] = display.pca_colours(features, self._pca[level])
        return self._cache[key]  # type: ignore[return-value]

    # ----------------------------------------------------------------------------------- export
    def _selection(self, config: Path) -> Selection:
        indices = self.selected().nonzero().squeeze(-1).cpu().tolist()
        prompts = {"source": "viewer", "clicks": [{"mode": mode, "screen_pos": pos} for mode, pos in self._screen],
                   "text": self._text, "threshold": self._threshold_value()}
        return Selection(str(config), fingerprint(self._model.means), self.level, indices, prompts)

    def save_selection(self) -> Optional[Path]:
        """Write the selection file beside the run's config.yml and show the `splatseg export` command for it."""
        if not self.has_prompts() or not bool(self.selected().any()):
            self._set(self._written, "Nothing is selected; nothing saved.")
            return None
        config = self._config_path()
        name = Path(self._file_name.value.strip() or "selection.json").name
        path = config.parent / (name if name.endswith(".json") else f"{name}.json")
        selection = self._selection(config)
        write_selection(path, selection)
        output = path.with_name(f"{path.stem}{'_without' if self._invert.value else ''}.ply")
        command = ["splatseg", "export", "--load-config", str(config), "--selection", str(path),
                   "--output", str(output), *(["--invert"] if self._invert.value else []),
                   *(["--keep-weak"] if self._keep_weak.value else [])]
        self._set(self._command, shlex.join(command))
        self._set(self._written, f"{path.name} ({len(selection.indices)} Gaussians), in {path.parent}")
        return path

    def export_ply(self) -> Optional[Path]:
        """Save the selection, then write the object (or the scene without it) as a PLY, as `splatseg export` does."""
        path = self.save_selection()
        if path is None:
            return None
        model, invert = self._model, bool(self._invert.value)
        selection = read_selection(path)
        output = path.with_name(f"{path.stem}{'_without' if invert else ''}.ply")
        index = self._click_index(selection.level)  # without candidates there is no similarity: weak members stay
        report = export_selection(output, selection, path, fingerprint(model.means), model.gauss_params,
                                  model.config.sh_degree,
                                  similarity=None if index is None else (lambda: index.similarity),
                                  margin=model.weak_below(selection.level), invert=invert,
                                  keep_weak=bool(self._keep_weak.value), run_path=path.parent / "config.yml")
        self._set(self._written, "  \n".join(line for line in (report.summary(), report.warning()) if line))
        return output
