/* The deal board: drag a card to a stage or onto Won / Lost / Postpone.
 *
 * Every drop asks the server (a thin view over deals.services). The server
 * answers with the moved card (X-Deal-Outcome: ok), nothing when the deal left
 * the board (removed), or a dialog (ask / invalid / conflict / forbidden /
 * not_found) whose form is sent again the same way. Cancelling a dialog puts
 * the card back where it was; a conflict reloads the card from the server.
 */
(function () {
  "use strict";
  var board = document.getElementById("board");
  if (!board || typeof Sortable === "undefined") return;
  var dialog = document.getElementById("deal-dialog");
  var dialogBody = dialog.querySelector(".dialog-body");
  var pending = null; // {card, from, next, fromStage, amount, conflict}

  function csrfToken() {
    var input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function urlFor(kind, dealId) {
    return board.dataset[kind + "Url"].replace("/0/", "/" + dealId + "/");
  }

  function amountOf(card) {
    return Number(card && card.dataset.amount) || 0;
  }

  function formatMoney(value) {
    return Math.round(value).toLocaleString(document.documentElement.lang || undefined);
  }

  function adjustColumn(stageId, countDelta, amountDelta) {
    var column = board.querySelector('.column[data-stage-id="' + stageId + '"]');
    if (!column) return;
    var count = column.querySelector(".column-count");
    var sum = column.querySelector(".column-sum");
    var newCount = Number(count.dataset.count) + countDelta;
    var newSum = Number(sum.dataset.sum) + amountDelta;
    count.dataset.count = newCount;
    count.textContent = newCount;
    sum.dataset.sum = newSum;
    sum.textContent = formatMoney(newSum);
  }

  function snapBack() {
    if (!pending) return;
    pending.from.insertBefore(pending.card, pending.next && pending.next.parentNode === pending.from ? pending.next : null);
  }

  function cardFromHtml(html) {
    var holder = document.createElement("div");
    holder.innerHTML = html.trim();
    return holder.querySelector(".deal-card");
  }

  function finishOk(html) {
    var card = pending.card;
    var fresh = cardFromHtml(html);
    adjustColumn(pending.fromStage, -1, -pending.amount);
    if (fresh) {
      adjustColumn(fresh.dataset.stageId, 1, amountOf(fresh));
      card.replaceWith(fresh);
    } else {
      card.remove();
    }
    pending = null;
    closeDialog();
  }

  function finishRemoved() {
    adjustColumn(pending.fromStage, -1, -pending.amount);
    pending.card.remove();
    pending = null;
    closeDialog();
  }

  function reloadCard(card) {
    var dealId = card.dataset.dealId;
    var oldStage = card.dataset.stageId;
    var oldAmount = amountOf(card);
    fetch(urlFor("card", dealId), { headers: { "HX-Request": "true" }, credentials: "same-origin" })
      .then(function (response) {
        return response.text().then(function (html) {
          var status = response.headers.get("X-Deal-Status");
          adjustColumn(oldStage, -1, -oldAmount);
          if (!response.ok || status !== "open") {
            card.remove();
            return;
          }
          var fresh = cardFromHtml(html);
          var list = board.querySelector('.cards[data-stage-id="' + fresh.dataset.stageId + '"]');
          card.remove();
          if (list) {
            list.insertBefore(fresh, list.firstChild);
            adjustColumn(fresh.dataset.stageId, 1, amountOf(fresh));
          }
        });
      });
  }

  function showDialog(html) {
    dialogBody.innerHTML = html;
    if (!dialog.open) dialog.showModal();
    var first = dialogBody.querySelector("input:not([type=hidden]), select, textarea, button");
    if (first) first.focus();
  }

  function showFailure() {
    showDialog(
      '<p class="error" role="alert">' + board.dataset.errorText + "</p>" +
      '<div class="dialog-buttons"><button type="button" class="primary" data-dialog-cancel>' + board.dataset.closeText + "</button></div>"
    );
  }

  function closeDialog() {
    if (dialog.open) dialog.close();
    dialogBody.innerHTML = "";
  }

  // The dialog closed without a successful answer: undo the drop.
  function abandon() {
    if (!pending) return;
    var card = pending.card;
    var conflict = pending.conflict;
    snapBack();
    pending = null;
    if (conflict) reloadCard(card);
  }

  function handle(response) {
    var outcome = response.headers.get("X-Deal-Outcome");
    return response.text().then(function (html) {
      if (!pending) return;
      if (response.ok && outcome === "ok") return finishOk(html);
      if (response.ok && outcome === "removed") return finishRemoved();
      if (outcome) {
        pending.conflict = outcome === "conflict";
        return showDialog(html);
      }
      showFailure();
    });
  }

  function post(url, data) {
    return fetch(url, {
      method: "POST",
      body: data,
      headers: { "HX-Request": "true", "X-CSRFToken": csrfToken() },
      credentials: "same-origin",
    })
      .then(handle)
      .catch(showFailure);
  }

  function ask(url) {
    return fetch(url, { headers: { "HX-Request": "true" }, credentials: "same-origin" })
      .then(function (response) {
        return response.text().then(function (html) {
          showDialog(html);
          var version = dialogBody.querySelector("input[name=version]");
          if (version && pending) version.value = pending.card.dataset.version;
        });
      })
      .catch(showFailure);
  }

  function onDrop(event) {
    var card = event.item;
    var target = event.to;
    if (target === event.from) return; // reordering inside a column is not stored
    pending = {
      card: card,
      from: event.from,
      next: origin.next,
      fromStage: event.from.dataset.stageId,
      amount: amountOf(card),
      conflict: false,
    };
    var dealId = card.dataset.dealId;
    var data = new FormData();
    data.append("version", card.dataset.version);
    var drop = target.dataset.drop;
    if (drop === "lose" || drop === "postpone") {
      ask(urlFor(drop, dealId));
    } else if (drop === "win") {
      post(urlFor("win", dealId), data);
    } else {
      data.append("stage", target.dataset.stageId);
      post(urlFor("move", dealId), data);
    }
  }

  var origin = { next: null };
  var options = {
    group: "deals",
    draggable: ".deal-card",
    animation: 120,
    forceFallback: true,
    fallbackTolerance: 4,
    delay: 150,
    delayOnTouchOnly: true,
    onStart: function (event) {
      origin.next = event.item.nextElementSibling;
    },
    onEnd: onDrop,
  };
  board.querySelectorAll(".cards").forEach(function (list) {
    Sortable.create(list, options);
  });
  document.querySelectorAll(".dropzone").forEach(function (zone) {
    Sortable.create(zone, { group: { name: "deals", pull: false, put: true }, draggable: ".deal-card" });
  });

  dialogBody.addEventListener("submit", function (event) {
    var form = event.target;
    event.preventDefault();
    if (!pending) return closeDialog();
    post(form.action, new FormData(form));
  });
  dialogBody.addEventListener("click", function (event) {
    if (event.target.closest("[data-dialog-cancel]")) {
      closeDialog();
    }
  });
  dialog.addEventListener("close", function () {
    dialogBody.innerHTML = "";
    abandon();
  });
})();
